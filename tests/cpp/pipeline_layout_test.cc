// The overlap schedule's layout (scheduler/pipeline_layout.h), built for
// every rank of a world from one count matrix and plan, checked against
// itself and against the sequential exchange plan: both ends of every stage
// agree, every row is sent once, and each rank computes the same rows per
// expert as under the sequential schedule.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <numeric>
#include <random>
#include <set>

#include "scheduler/expert_parallel.h"
#include "scheduler/pipeline_layout.h"

namespace dynamoe::scheduler {
namespace {

at::Tensor RandomCounts(int64_t P, int64_t E, uint32_t seed, bool with_zeros) {
  std::mt19937 gen(seed);
  at::Tensor c = at::zeros({P, E}, at::kLong);
  for (int64_t i = 0; i < P * E; ++i) c.data_ptr<int64_t>()[i] = with_zeros && gen() % 3 == 0 ? 0 : gen() % 9;
  return c;
}

placement::Plan PlanWithCopies(int64_t P, int64_t E) {
  placement::Plan plan = placement::Plan::None(P, E);
  // Expert 1 shadowed everywhere, the last expert copied to rank 0.
  for (int32_t r = 0; r < P; ++r)
    if (r != plan.owner[1]) plan.copies[1].push_back(r);
  if (plan.owner[E - 1] != 0) plan.copies[E - 1].push_back(0);
  return plan;
}

std::vector<int64_t> Values(const at::Tensor& t) {
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
}

struct Shape {
  int64_t world, experts, group_size, degree;
};

class PipelineLayoutTest : public testing::TestWithParam<Shape> {};

TEST_P(PipelineLayoutTest, StagesAgreeAndMatchSequential) {
  const Shape s = GetParam();
  for (bool copies : {false, true})
    for (uint32_t seed : {1u, 2u, 3u}) {
      const at::Tensor counts = RandomCounts(s.world, s.experts, seed, seed == 3);
      const placement::Plan plan = copies ? PlanWithCopies(s.world, s.experts) : placement::Plan::None(s.world, s.experts);
      std::vector<PipelineLayout> layouts;
      for (int r = 0; r < s.world; ++r) layouts.push_back(MakePipelineLayout(counts, r, plan, s.group_size, s.degree));
      const int64_t g = std::min<int64_t>(s.group_size, s.world - 1);
      const int64_t stages = (s.world - 1 + g - 1) / g * s.degree;
      for (int r = 0; r < s.world; ++r) {
        const PipelineLayout& L = layouts[r];
        const ExchangePlan seq = MakeExchangePlan(counts, r, plan);
        ASSERT_EQ(static_cast<int64_t>(L.stages.size()), stages);
        EXPECT_EQ(L.slot_experts, seq.slot_experts);
        // Every row this rank sends appears once in send order.
        const int64_t rows = std::accumulate(seq.send_rows.begin(), seq.send_rows.end(), int64_t{0});
        std::vector<int64_t> order(rows);
        std::iota(order.begin(), order.end(), 0);
        if (L.to_send_order.defined()) order = Values(L.to_send_order);
        EXPECT_EQ(std::set<int64_t>(order.begin(), order.end()).size(), static_cast<size_t>(rows));
        // Units tile the send buffer; the rows computed per slot equal sequential's.
        int64_t offset = L.local.send_total;
        std::vector<int64_t> per_slot = Values(L.local.slot_counts);
        EXPECT_EQ(L.local.send_total, seq.send_rows[r]);
        for (size_t t = 0; t < L.stages.size(); ++t) {
          const PipelineUnit& u = L.stages[t];
          EXPECT_EQ(u.send_offset, offset);
          offset += u.send_total;
          EXPECT_EQ(u.recv_total, std::accumulate(u.recv_splits.begin(), u.recv_splits.end(), int64_t{0}));
          const std::vector<int64_t> k = Values(u.slot_counts);
          for (size_t i = 0; i < k.size(); ++i) per_slot[i] += k[i];
          // Both ends agree, and an idle stage is idle everywhere.
          for (int q = 0; q < s.world; ++q) {
            EXPECT_EQ(u.send_splits[q], layouts[q].stages[t].recv_splits[r]) << "stage " << t << " " << r << "->" << q;
            EXPECT_EQ(u.idle, layouts[q].stages[t].idle);
          }
          if (u.idle) EXPECT_EQ(u.send_total + u.recv_total, 0);
          EXPECT_EQ(u.send_splits[r], 0) << "a stage sends to its own rank";
        }
        EXPECT_EQ(offset, rows);
        EXPECT_EQ(per_slot, Values(seq.local_counts));
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, PipelineLayoutTest,
                         testing::Values(Shape{2, 4, 1, 1}, Shape{2, 4, 4, 3}, Shape{3, 6, 1, 2}, Shape{3, 6, 2, 1},
                                         Shape{4, 8, 3, 2}, Shape{5, 10, 2, 4}, Shape{8, 16, 3, 5}));

TEST(PipelineLayout, RejectsDegreeZero) {
  EXPECT_THROW(MakePipelineLayout(at::zeros({2, 4}, at::kLong), 0, placement::Plan::None(2, 4), 1, 0), std::exception);
}

TEST(PipelineLayout, GroupsClampToPeers) {
  EXPECT_EQ(ClampGroupSize(4, 2), 1);
  EXPECT_EQ(PeerGroups(4, 2), 1);
  EXPECT_EQ(PeerGroups(2, 4), 2);  // 3 peers in groups of 2: uneven
  EXPECT_EQ(PeerGroups(1, 5), 4);
  EXPECT_EQ(PeerGroups(8, 1), 0);  // one rank: nothing to exchange
}

}  // namespace
}  // namespace dynamoe::scheduler
