// The overlap schedule across real processes (schedule_worker.cc): world
// sizes 2, 3 and 4, every placement policy, group sizes that do and do not
// divide the peers, overlap degrees with uneven and empty chunks, a rank
// with no tokens, float64 / float32 / bfloat16, forward and backward, all
// equal to the sequential schedule; and the pipeline makes no idle waits
// inside its loop.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/cpp/gloo_skip.h"
#include "tools/local_launch.h"

namespace {

struct Case {
  std::string name;  // the ctest name's last part
  int world;
  std::vector<std::string> args;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class ScheduleEpTest : public testing::TestWithParam<Case> {};

TEST_P(ScheduleEpTest, OverlapMatchesSequential) {
  DYNAMOE_SKIP_WITHOUT_GLOO();
  dynamoe::tools::LaunchOptions options;
  options.env = {{"DYNAMOE_LOG_LEVEL", "warning"}, {"DYNAMOE_GPU_FLOPS", "1e6"}};
  const auto results = dynamoe::tools::LaunchLocal(DYNAMOE_SCHEDULE_WORKER, GetParam().args, GetParam().world, options);
  const std::string all = dynamoe::tools::DescribeResults(results);
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << all;
  EXPECT_NE(results[0].out.find("all checks passed"), std::string::npos) << all;
}

INSTANTIATE_TEST_SUITE_P(
    Worlds, ScheduleEpTest,
    testing::Values(Case{"W2_Degrees123", 2, {"tokens=13,7", "groups=1,4", "degrees=1,2,3"}},
                    Case{"W3_RankWithoutTokens", 3, {"tokens=13,0,17", "experts=6", "groups=1,2", "degrees=1,2"}},
                    Case{"W4_EveryGroupSize", 4, {"tokens=13,0,17,9", "groups=1,2,3,4", "degrees=1,3"}},
                    Case{"W4_GatedFp32Bf16", 4,
                         {"tokens=6,11,0,20", "gated=1", "experts=12", "groups=2", "degrees=2",
                          "policies=none,adaptive", "dtypes=float,bfloat16"}},
                    Case{"W3_Degree5Fp32Bf16", 3,
                         {"tokens=9,14,5", "experts=6", "groups=1", "degrees=5", "policies=none,eplb",
                          "dtypes=float,bfloat16"}}),
    [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
