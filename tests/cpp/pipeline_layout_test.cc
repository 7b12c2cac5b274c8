// The overlap schedule's layout (scheduler/pipeline_layout.h), built for
// every rank of a world from one count matrix and plan, checked against
// itself and against the sequential exchange plan: both ends of every stage
// agree, every row is sent once, and each rank computes the same rows per
// expert as under the sequential schedule; with quotas, the rows the quotas
// send it.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <numeric>
#include <random>
#include <set>

#include "placement/quotas.h"
#include "scheduler/expert_parallel.h"
#include "scheduler/pipeline_layout.h"
#include "scheduler/token_exchange.h"

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

// PlanWithCopies with quotas: water-filled (every row may move), then expert
// 1's replaced by a hand-made one where source s sends all its rows to rank
// s + 1 (mod P), so every holder's own rows leave it.
placement::Plan PlanWithQuotas(const at::Tensor& counts) {
  const int64_t P = counts.size(0), E = counts.size(1);
  placement::Plan plan = PlanWithCopies(P, E);
  const placement::CountMatrix m = ToCountMatrix(counts);
  placement::ClusterSpec cluster;
  cluster.world_size = P;
  placement::AssignQuotas(plan, m, cluster, false);
  placement::Quota& q = plan.quotas[1];
  q = placement::Quota{};
  q.start.push_back(0);
  for (int64_t s = 0; s < P; ++s) {
    if (m.at(s, 1) > 0) {
      q.dest.push_back(static_cast<int32_t>((s + 1) % P));
      q.rows.push_back(m.at(s, 1));
    }
    q.start.push_back(static_cast<int32_t>(q.dest.size()));
  }
  return plan;
}

// Rows of each expert rank r computes, read off the quotas (all cover their
// sources here) and the owners, without RoutesOf.
std::vector<int64_t> QuotaRowsOn(const placement::Plan& plan, const at::Tensor& counts, int64_t r) {
  const int64_t P = counts.size(0), E = counts.size(1);
  std::vector<int64_t> rows(E, 0);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t s = 0; s < P; ++s) {
      if (!plan.HasQuota(e)) {
        if (plan.owner[e] == r) rows[e] += counts[s][e].item<int64_t>();
        continue;
      }
      const placement::Quota& q = plan.quotas[e];
      for (int32_t k = q.start[s]; k < q.start[s + 1]; ++k) rows[e] += q.dest[k] == r ? q.rows[k] : 0;
    }
  return rows;
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
  for (int kind : {0, 1, 2})  // no copies, copies on the split rule, copies with quotas
    for (uint32_t seed : {1u, 2u, 3u}) {
      const at::Tensor counts = RandomCounts(s.world, s.experts, seed, seed == 3);
      const placement::Plan plan = kind == 0   ? placement::Plan::None(s.world, s.experts)
                                   : kind == 1 ? PlanWithCopies(s.world, s.experts)
                                               : PlanWithQuotas(counts);
      ASSERT_TRUE(plan.Validate().ok()) << plan.Validate();
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
        if (kind == 2) {
          const std::vector<int64_t> want = QuotaRowsOn(plan, counts, r);
          for (size_t k = 0; k < L.slot_experts.size(); ++k)
            EXPECT_EQ(per_slot[k], want[L.slot_experts[k]]) << "rank " << r << " expert " << L.slot_experts[k];
        }
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
