#include <gtest/gtest.h>

#include "placement/count_matrix.h"

namespace dynamoe::placement {
namespace {

TEST(CountMatrix, LoadsSumOverRanks) {
  auto m = CountMatrix::Make(2, 3, {1, 2, 3, 10, 0, 5});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->ExpertLoads(), (std::vector<int64_t>{11, 2, 8}));
  EXPECT_EQ(m->Total(), 21);
  EXPECT_DOUBLE_EQ(LoadImbalance(m->ExpertLoads()), 11.0 / 7.0);
  EXPECT_EQ(DeadExperts({0, 4, 0}), 2);
  EXPECT_DOUBLE_EQ(LoadImbalance({0, 0}), 0.0);
}

TEST(CountMatrix, RejectsBadShapes) {
  EXPECT_EQ(CountMatrix::Make(2, 3, {1, 2}).status().message(), "count matrix of 2 x 3 needs 6 entries, got 2");
  EXPECT_FALSE(CountMatrix::Make(0, 3, {}).ok());
  EXPECT_FALSE(CountMatrix::Make(1, 2, {1, -1}).ok());
}

}  // namespace
}  // namespace dynamoe::placement
