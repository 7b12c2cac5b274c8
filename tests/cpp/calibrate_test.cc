// dynamoe-replay calibrate (replay/calibrate.h) on traces whose phase
// times follow rates chosen here.
#include "replay/calibrate.h"

#include <gtest/gtest.h>

#include "placement/cost_model.h"
#include "placement/quotas.h"

#include <algorithm>
#include <array>

namespace dynamoe::placement {
namespace {

// 2 ranks, 4 experts (0, 1 on rank 0; 2, 3 on rank 1), 32-byte rows. Rank 0
// recorded it. Rates: 4 ms per expert row + 1 ms, 0.1 ms per message,
// 32,000 B/s (1 ms per row), gate 1 ms, count all-gather 0.5 ms.
constexpr double kSpr = 4e-3, kExpertB = 1e-3, kLatency = 1e-4, kBw = 32e3, kGate = 1e-3, kGather = 5e-4;

// Rank 0's phase seconds for a step: rows and links as the plan routes them
// (its quotas where set), one exchange costing its slowest (rank, side)
// messages * latency + bytes / bw, the copies' weights broadcast likewise.
std::vector<double> PhasesOf(const CountMatrix& counts, const Plan& plan, double expert_bytes = 2.0 * 8 * 16 * 4) {
  std::array<double, 2> rows{};
  std::array<int64_t, 4> moved{};  // [from * 2 + to]
  ForEachRoute(plan, counts, [&](int64_t a, int64_t, int64_t b, int64_t n) {
    rows[b] += static_cast<double>(n);
    moved[a * 2 + b] += n;
  });
  auto side = [](double bytes) { return bytes > 0 ? kLatency + bytes / kBw : 0.0; };
  const double exchange = std::max(side(32.0 * moved[1]), side(32.0 * moved[2]));
  double out[2] = {0, 0};  // broadcast bytes sent by each rank (2 ranks: each side's sum)
  for (int64_t e = 0; e < 4; ++e)
    out[plan.owner[e]] += expert_bytes * static_cast<double>(plan.copies[e].size());
  const double broadcast = std::max(side(out[0]), side(out[1]));
  // Dispatch and combine; the combine also waits for rank 1's experts when it has more rows.
  const double moved_s = 2 * exchange + kSpr * (std::max(rows[0], rows[1]) - rows[0]);
  return {kGate, kGather, broadcast, moved_s / 2, kSpr * rows[0] + kExpertB, moved_s / 2};
}

TraceStep StepOf(int64_t s) {
  TraceStep st;
  st.step = s;
  // Rank 0 keeps 2 + s rows and sends s % 5 to expert 2; rank 1 sends s % 3 to expert 1 and keeps 1 + s % 4.
  st.kept = *CountMatrix::Make(2, 4, {2 + s, 0, s % 5, 0, /**/ 0, s % 3, 1 + s % 4, 0});
  st.routed = st.kept;
  st.phase_seconds = PhasesOf(st.kept, Plan::None(2, 4));
  return st;
}

Trace Linear(int64_t steps) {
  Trace t;
  t.rank = 0;
  t.phase_names = {"gate", "count_allgather", "shadow_broadcast", "dispatch", "experts", "combine"};
  t.layers.push_back({"moe0", 4, 8, 16, false, false, 4});
  for (int64_t s = 0; s < steps; ++s) t.steps.push_back(StepOf(s));
  return t;
}

// Exact data: the fit recovers the rates, and the held-out error is 0.
TEST(Calibrate, RecoversTheRatesOfAnExactTrace) {
  const Trace t = Linear(40);
  const auto c = Calibrate(t, 0.25);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->warmup_steps, 4);  // min(10, 40 / 10)
  EXPECT_EQ(c->fit_steps, 27);
  EXPECT_EQ(c->heldout_steps, 9);
  EXPECT_EQ(c->layer, "moe0");
  // Exact linear data: only rounding separates the fit from the rates.
  EXPECT_NEAR(c->rates.seconds_per_row / kSpr, 1, 1e-6);
  EXPECT_NEAR(c->rates.expert_fixed_s / kExpertB, 1, 1e-5);
  EXPECT_TRUE(c->rates.fitted[0] && c->rates.fitted[2]);
  EXPECT_NEAR(c->rates.intra_node_latency_s / kLatency, 1, 1e-5);
  EXPECT_NEAR(c->rates.intra_node_bw / kBw, 1, 1e-6);
  EXPECT_FALSE(c->rates.fitted[1] || c->rates.fitted[3]);  // one node: no inter-node link
  EXPECT_NEAR(c->rates.fixed_s / (kGate + kGather + kExpertB), 1, 1e-5);
  EXPECT_NEAR(c->flops, 2.0 * 2 * 8 * 16 / kSpr, 1e-3);  // FLOP per row / seconds per row
  EXPECT_NEAR(c->bytes_per_second, kBw, 1e-3);
  ASSERT_EQ(c->fits.size(), 2u);
  EXPECT_LT(c->fits[0].heldout_median_error, 1e-6);
  EXPECT_LT(c->fits[1].heldout_median_error, 1e-6);
  EXPECT_EQ(c->step_errors.size(), 9u);
  EXPECT_LT(c->step_median_error, 1e-6);
  EXPECT_LT(c->work_median_error, 1e-6);
  EXPECT_GE(c->online_median_error, 0);
  EXPECT_LT(c->online_median_error, 1e-6);
}

// A few fit steps 5x slower in the experts (a preempted rank): the fit
// follows the typical step, where least squares would be dragged far off.
TEST(Calibrate, ShrugsOffPreemptedSteps) {
  Trace t = Linear(40);
  for (int64_t s : {6, 12, 18, 24}) t.steps[s].phase_seconds[4] *= 5;
  const auto c = Calibrate(t, 0.25);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NEAR(c->rates.seconds_per_row, kSpr, 0.01 * kSpr);  // 4 outliers among 27 steps: within 1%
  EXPECT_LT(c->fits[0].heldout_median_error, 0.01);
  EXPECT_LT(c->step_median_error, 0.01);
}

// Recorded plans carry no quotas: calibration reassigns them as the policy
// did (AssignBestQuotas on the prior cluster), so a copied expert's rows are
// fitted where they ran. Here the hot expert 0 is copied to rank 1 and the
// times follow the quotas; fitted on the split rule's routing instead, the
// experts' rows would be wrong and the fit inexact.
TEST(Calibrate, RecordedPlansAreRoutedByTheirQuotas) {
  Trace t = Linear(40);
  // A wide expert, so that moving rows off the hot rank pays in the prior's model.
  t.layers[0].d_hidden = 4096;
  const LayerSpec layer{8, 4096, false, false, 4};
  ClusterSpec cluster;
  cluster.world_size = 2;
  int64_t differ = 0;
  for (TraceStep& st : t.steps) {
    st.kept = *CountMatrix::Make(2, 4, {40 + 3 * st.step, 0, 1 + st.step % 5, 0, /**/ st.step % 7, 1, 2, 0});
    st.routed = st.kept;
    Plan recorded = Plan::None(2, 4);
    recorded.copies[0] = {1};
    Plan ran = recorded;
    AssignBestQuotas(ran, st.kept, CostModel(cluster, layer));
    std::array<int64_t, 2> split{}, quota{};
    ForEachRoute(recorded, st.kept, [&](int64_t, int64_t, int64_t d, int64_t n) { split[d] += n; });
    ForEachRoute(ran, st.kept, [&](int64_t, int64_t, int64_t d, int64_t n) { quota[d] += n; });
    differ += split != quota;
    st.phase_seconds = PhasesOf(st.kept, ran, layer.ExpertBytes());
    st.plan = recorded;  // what a trace holds: copies, no quotas
  }
  ASSERT_GT(differ, 20) << "the quotas must move rows the split rule would not";
  const auto c = Calibrate(t, 0.25);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NEAR(c->rates.seconds_per_row / kSpr, 1, 1e-6);
  EXPECT_LT(c->fits[0].heldout_median_error, 1e-6);
  EXPECT_LT(c->step_median_error, 1e-6);
}

TEST(Calibrate, TracesWithoutTimingsAreAnError) {
  Trace imported = Linear(20);
  for (auto& st : imported.steps) st.phase_seconds.clear();
  const auto none = Calibrate(imported);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("at least 5"), std::string::npos) << none.status();
}

// A decoded step of 3 experts on 2 ranks without a plan (the reader accepts
// it; the fuzz driver now calibrates what parses) made calibration home
// expert 2 on rank 2, past its per-rank tables. Now an error naming the step.
TEST(Calibrate, ExpertsThatDoNotDivideOverTheRanksAreAnError) {
  Trace t;
  t.rank = 0;
  t.phase_names = {"dispatch", "experts", "combine"};
  t.layers.push_back({"moe0", 3, 8, 16, false, false, 4});
  for (int64_t s = 0; s < 8; ++s) {
    TraceStep st;
    st.step = s;
    st.kept = *CountMatrix::Make(2, 3, {1, 2, 3 + s, 4, 5, 6});
    st.routed = st.kept;
    st.phase_seconds = {0.1, 0.2 + s, 0.1};
    t.steps.push_back(st);
  }
  const auto c = Calibrate(t);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("step 0 has 3 experts, not a multiple of its 2 ranks"), std::string::npos)
      << c.status();
}

}  // namespace
}  // namespace dynamoe::placement
