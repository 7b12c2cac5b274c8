// The replay engine on traces whose predicted times are worked out by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "placement/policy.h"
#include "replay/calibrate.h"
#include "replay/replay.h"
#include "replay/replay_inputs.h"

namespace dynamoe::placement {
namespace {

// One layer (d_model 8, d_hidden 16, fp32, not gated), world 2, 4 experts.
// Cluster: 1000 FLOP/s, 32 B/s links, 0.5 s latency, so that
//   seconds per row  = 2 matrices * 2 * 8 * 16 / 1000 = 0.512 s (forward)
//   row transfer     = 8 * 4 B / 32 B/s = 1 s
// Plain expert parallelism: experts 0, 1 on rank 0; 2, 3 on rank 1.
Trace TwoStepTrace() {
  Trace t;
  t.world_size = 2;
  t.layers.push_back({"moe0", 4, 8, 16, false, false, 4});
  TraceStep a, b;
  a.step = 0, b.step = 1;
  a.kept = *CountMatrix::Make(2, 4, {4, 0, 0, 0, /**/ 0, 0, 2, 0});  // every row stays home
  b.kept = *CountMatrix::Make(2, 4, {0, 0, 3, 0, /**/ 1, 0, 0, 0});  // 3 rows 0 -> 1, 1 row 1 -> 0
  a.routed = a.kept, b.routed = b.kept;
  t.steps = {a, b};
  return t;
}

ReplayOptions Options() {
  ReplayOptions o;
  o.policies = {"none"};
  o.cluster.flops = 1000;
  o.cluster.intra_node_bw = 32;
  o.cluster.intra_node_latency_s = 0.5;
  return o;
}

TEST(Replay, PredictsTheHandComputedTimes) {
  const auto r = Replay(TwoStepTrace(), Options());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->policies.size(), 1u);
  const PolicyReport& p = r->policies[0];
  ASSERT_EQ(p.step_seconds.size(), 2u);
  // Step 0: no exchange; rank 0 computes 4 rows, forward + backward = 3x:
  //   4 * 0.512 * 3 = 6.144 s.
  EXPECT_NEAR(p.step_seconds[0], 6.144, 1e-12);
  // Step 1: the busiest link carries 3 rows: 0.5 + 3 * 1 = 3.5 s per exchange,
  // 4 exchanges in training; rank 1 computes 3 rows: 3 * 0.512 * 3 = 4.608 s.
  EXPECT_NEAR(p.step_seconds[1], 4 * 3.5 + 4.608, 1e-12);
  EXPECT_NEAR(p.mean_seconds, (6.144 + 18.608) / 2, 1e-12);
  EXPECT_NEAR(p.p99_seconds, 18.608, 1e-12);
  EXPECT_DOUBLE_EQ(p.speedup_vs_none, 1.0);
  // Expert loads {4,0,2,0} and {1,0,3,0}: max/mean 4/1.5 and 3/1; rows per
  // rank {4,2} and {1,3}: 4/3 and 3/2.
  EXPECT_NEAR(p.imbalance_before, (4 / 1.5 + 3.0) / 2, 1e-12);
  EXPECT_NEAR(p.imbalance_after, (4 / 3.0 + 1.5) / 2, 1e-12);
  EXPECT_EQ(p.plan_changes, 0);
  EXPECT_EQ(p.copies_per_step, 0);
  // Step 1 moves 4 rows off their rank (3 + 1), 32 bytes each, in 4 exchanges.
  EXPECT_DOUBLE_EQ(p.bytes_per_step, (0 + 4 * 32 * 4) / 2.0);
}

TEST(Replay, RehomesToALargerWorldAndChecksTheFit) {
  const CountMatrix c = *CountMatrix::Make(2, 4, {1, 2, 3, 4, 5, 6, 7, 8});
  const auto four = Rehome(c, 4);
  ASSERT_TRUE(four.ok()) << four.status();
  EXPECT_EQ(four->counts, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8}));
  const auto three = Rehome(c, 3);
  ASSERT_FALSE(three.ok());
  EXPECT_NE(three.status().message().find("4 experts do not divide over 3 ranks"), std::string::npos)
      << three.status();
  ReplayOptions o = Options();
  o.world_size = 8;
  const auto r = Replay(TwoStepTrace(), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
}

TEST(Replay, EveryPolicyIsDeterministicAndNoneIsTheBaseline) {
  ReplayOptions o = Options();
  o.policies = {"none", "fastermoe", "adaptive", "eplb"};
  const auto a = Replay(TwoStepTrace(), o), b = Replay(TwoStepTrace(), o);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->policies.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(a->policies[i].step_seconds, b->policies[i].step_seconds) << a->policies[i].policy;
    EXPECT_NEAR(a->policies[i].speedup_vs_none, a->policies[0].mean_seconds / a->policies[i].mean_seconds, 1e-12);
  }
  std::vector<int64_t> seen;
  o.progress = [&](int64_t done, int64_t total) {
    EXPECT_EQ(total, 8);  // 2 steps x 4 policies
    seen.push_back(done);
  };
  ASSERT_TRUE(Replay(TwoStepTrace(), o).ok());
  EXPECT_EQ(seen, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  o.policies = {"nonsense"};
  const auto bad = Replay(TwoStepTrace(), o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("nonsense"), std::string::npos) << bad.status();
  EXPECT_FALSE(Replay(Trace{}, Options()).ok());
}

// README: "Results are deterministic (the thread count does not change them)".
// 7 layers x (4 policies + the bound) = 35 work items spread over 1 to 24 threads (more
// than the cores: the items then interleave arbitrarily) must give bitwise
// the same report, sums included. Layer 0 has 8x the experts of the others,
// so its items finish last on several threads: sums taken in completion
// order would differ.
TEST(Replay, ResultsDoNotDependOnTheThreadCount) {
  SynthOptions so;
  so.steps = 60, so.layers = 1, so.experts = 128, so.world = 4, so.tokens = 256, so.drift_every = 20;
  so.burst_every = 15, so.seed = 5;
  auto t = Synthesize(so);
  ASSERT_TRUE(t.ok()) << t.status();
  so.layers = 6, so.experts = 16, so.seed = 6;
  const auto small = Synthesize(so);
  ASSERT_TRUE(small.ok()) << small.status();
  for (const TraceLayerSpec& l : small->layers) t->layers.push_back(l);
  for (TraceStep s : small->steps) {
    s.layer += 1;
    t->steps.push_back(s);
  }
  ReplayOptions o;
  o.world_size = 8;
  o.threads = 1;
  const auto one = Replay(*t, o);
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->policies.size(), 5u);  // the four policies and the bound
  EXPECT_GT(one->policies[2].copies_per_step, 0);  // adaptive copied: the sums hold more than zeros
  for (int64_t threads : {2, 3, 7, 24, 0}) {
    o.threads = threads;
    const auto r = Replay(*t, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->step_imbalance_before, one->step_imbalance_before) << threads << " threads";
    for (size_t p = 0; p < 5; ++p) {
      const PolicyReport &a = one->policies[p], &b = r->policies[p];
      SCOPED_TRACE(a.policy + ", " + std::to_string(threads) + " threads");
      // Exact: the same arithmetic in the same order, whatever thread ran it.
      EXPECT_EQ(b.step_seconds, a.step_seconds);
      EXPECT_EQ(b.step_imbalance_after, a.step_imbalance_after);
      EXPECT_EQ(b.step_copies, a.step_copies);
      EXPECT_EQ(b.mean_seconds, a.mean_seconds);
      EXPECT_EQ(b.p99_seconds, a.p99_seconds);
      EXPECT_EQ(b.speedup_vs_none, a.speedup_vs_none);
      EXPECT_EQ(b.imbalance_before, a.imbalance_before);
      EXPECT_EQ(b.imbalance_after, a.imbalance_after);
      EXPECT_EQ(b.copies_per_step, a.copies_per_step);
      EXPECT_EQ(b.bytes_per_step, a.bytes_per_step);
      EXPECT_EQ(b.plan_changes, a.plan_changes);
      EXPECT_TRUE(b.bound_fraction == a.bound_fraction || (std::isnan(a.bound_fraction) && std::isnan(b.bound_fraction)));
    }
  }
}

// Counts whose sums would overflow int64 (negative loads) and worlds whose
// tables would not fit are errors, not garbage or bad_alloc.
TEST(Replay, RejectsOverflowingCountsAndHugeWorlds) {
  Trace t = TwoStepTrace();
  const int64_t big = std::numeric_limits<int64_t>::max() / 2 + 1;
  t.steps[1].kept = *CountMatrix::Make(2, 4, {big, 0, 0, 0, /**/ big, 0, 0, 0});
  const auto overflow = Replay(t, Options());
  ASSERT_FALSE(overflow.ok());
  EXPECT_NE(overflow.status().message().find("sum to at most 2^40"), std::string::npos) << overflow.status();

  ReplayOptions o = Options();
  o.world_size = 8192;
  const auto world = Replay(TwoStepTrace(), o);
  ASSERT_FALSE(world.ok());
  EXPECT_NE(world.status().message().find("must be in [1, 4096]"), std::string::npos) << world.status();
  const CountMatrix wide = *CountMatrix::Make(1, 8192, std::vector<int64_t>(8192, 1));
  const auto cells = Rehome(wide, 4096);  // 2^25 cells
  ASSERT_FALSE(cells.ok());
  EXPECT_NE(cells.status().message().find("over 2^24 count-matrix cells"), std::string::npos) << cells.status();
}

// A steep popularity underflows every weight but the first: each token must
// still get top_k distinct experts (it used to walk off the weight array).
TEST(Replay, SynthesizeWithASteepZipfAndItsLimits) {
  SynthOptions o;
  o.steps = 3, o.experts = 8, o.top_k = 4, o.world = 2, o.tokens = 50, o.zipf = 2000;
  const auto t = Synthesize(o);
  ASSERT_TRUE(t.ok()) << t.status();
  for (const TraceStep& s : t->steps)
    for (int64_t r = 0; r < 2; ++r) {
      int64_t row = 0;
      for (int64_t e = 0; e < 8; ++e) {
        EXPECT_LE(s.kept.at(r, e), 50);
        row += s.kept.at(r, e);
      }
      EXPECT_EQ(row, 50 * 4);
      EXPECT_EQ(s.kept.at(r, 0), 50);  // the hot expert, every time
    }
  auto fails = [](SynthOptions o, const std::string& what) {
    const auto t = Synthesize(o);
    ASSERT_FALSE(t.ok()) << what;
    EXPECT_NE(t.status().message().find(what), std::string::npos) << t.status();
  };
  SynthOptions bad;
  bad.zipf = std::numeric_limits<double>::quiet_NaN();
  fails(bad, "a finite zipf");
  bad = {}, bad.world = 5000;
  fails(bad, "world in [1, 4096]");
  bad = {}, bad.world = 4096, bad.experts = 8192;
  fails(bad, "world x experts must be at most 2^24");
  bad = {}, bad.world = 4096, bad.tokens = 1 << 30;
  fails(bad, "world x tokens x top_k at most 2^40");
  bad = {}, bad.steps = 1'000'000, bad.experts = 1024;
  fails(bad, "at most 2^27");
}

// The force-balanced bound on 4 ranks, two nodes of 2, worked out by hand.
// d_model 8 fp32 rows (32 B): 1 s per row inside a node (32 B/s), 2 s
// between nodes (16 B/s); latency 0.5 s inside, 1 s between; 0.512 s of
// forward compute per row (as above).
//   rows routed per rank R = {8, 4, 0, 4}: 16 in all, ceil(16 / 4) = 4 rows
//   computed per rank; each rank sends R / 4 to every other rank:
//   send 0 = (0.5 + 2 * 1) + 2 * (1 + 2 * 2)      = 12.5   (its node peer, two remote)
//   send 1 = (0.5 + 1 * 1) + 2 * (1 + 1 * 2)      = 7.5
//   send 3 = (0.5 + 1 * 1) + 2 * (1 + 1 * 2)      = 7.5    (rank 2 sends nothing)
//   recv 2 = (0.5 + 1 * 1) + (1 + 2 * 2) + (1 + 1 * 2) = 9.5 (from 3; from 0 and 1)
//   recv 0 = 4.5, recv 1 = 5.5, recv 3 = 8 (rank 2 sends nothing: no latency)
// One exchange is the slowest: 12.5 s; training has four.
ClusterSpec TwoNodes() {
  ClusterSpec c;
  c.world_size = 4, c.ranks_per_node = 2, c.flops = 1000, c.intra_node_bw = 32, c.inter_node_bw = 16;
  c.intra_node_latency_s = 0.5, c.inter_node_latency_s = 1.0;
  return c;
}
const CountMatrix kTwoNodeCounts = *CountMatrix::Make(4, 4, {8, 0, 0, 0, /**/ 0, 4, 0, 0, /**/ 0, 0, 0, 0, /**/ 4, 0, 0, 0});

TEST(Replay, BalancedBoundMatchesTheHandComputedCost) {
  const LayerSpec layer{8, 16, false, false, 4};
  const StepCost c = BalancedCost(kTwoNodeCounts, CostModel(TwoNodes(), layer));
  EXPECT_EQ(c.max_rows, 4);
  EXPECT_NEAR(c.all_to_all, 4 * 12.5, 1e-12);
  EXPECT_NEAR(c.compute, 4 * 0.512 * 3, 1e-12);
  EXPECT_EQ(c.broadcast, 0);  // no weights move
  EXPECT_EQ(c.reduce, 0);
  EXPECT_NEAR(c.total, 50 + 6.144, 1e-12);
  CostOptions overlap;
  overlap.overlap = true;
  EXPECT_NEAR(BalancedCost(kTwoNodeCounts, CostModel(TwoNodes(), layer, overlap)).total, 50, 1e-12);
  // Inference: two exchanges, forward compute only.
  CostOptions inference;
  inference.training = false;
  EXPECT_NEAR(BalancedCost(kTwoNodeCounts, CostModel(TwoNodes(), layer, inference)).total, 25 + 4 * 0.512, 1e-12);
}

// The bound as a replay row, and speed-up and share always against none:
// replayed when not listed, and then not reported.
TEST(Replay, BalancedRowAndSharesAgainstNoneWhetherListedOrNot) {
  Trace t;
  t.world_size = 4;
  t.layers.push_back({"moe0", 4, 8, 16, false, false, 4});
  TraceStep st;
  st.kept = st.routed = kTwoNodeCounts;
  t.steps = {st};
  ReplayOptions o;
  o.cluster = TwoNodes();
  o.policies = {"balanced", "none"};
  const auto r = Replay(t, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->policies.size(), 2u);
  const PolicyReport &bound = r->policies[0], &none = r->policies[1];
  EXPECT_EQ(bound.policy, "balanced");
  EXPECT_NEAR(bound.mean_seconds, 56.144, 1e-12);
  EXPECT_NEAR(bound.imbalance_after, 1.0, 1e-12);  // 4 rows on every rank, mean 4
  EXPECT_EQ(bound.copies_per_step, 0);
  // Every rank keeps a quarter of its rows: 12 of 16 leave, 32 B each, 4 exchanges.
  EXPECT_NEAR(bound.bytes_per_step, 12 * 32 * 4, 1e-9);
  // none: expert e on rank e. Rank 0 computes 12 rows (its 8 and rank 3's 4):
  // 12 * 0.512 * 3 = 18.432 s. The one link, 3 -> 0 (between nodes), carries
  // 4 rows: 1 + 4 * 2 = 9 s per exchange, 36 s in training. 54.432 s.
  EXPECT_NEAR(none.mean_seconds, 54.432, 1e-12);
  EXPECT_NEAR(none.imbalance_after, 12 / 4.0, 1e-12);
  // The bound is slower here (its exchange costs more than none's imbalance):
  // no gain to share.
  EXPECT_TRUE(std::isnan(none.bound_fraction));
  EXPECT_NEAR(bound.speedup_vs_none, 54.432 / 56.144, 1e-12);

  // Compute 1000x slower (1 FLOP/s) makes it dominate: 512 s per row, the
  // same links. none: 12 * 512 * 3 + 36 = 18468 s; bound: 4 * 512 * 3 + 50 =
  // 6194 s. A copy of expert 0 costs 2 * (0.5 + 1024 B / 32 B/s) = 65 s on
  // rank 0's node peer: worth it.
  o.cluster.flops = 1;
  o.policies = {"adaptive", "eplb"};  // neither none nor the bound listed
  const auto big = Replay(t, o);
  ASSERT_TRUE(big.ok()) << big.status();
  ASSERT_EQ(big->policies.size(), 2u);
  EXPECT_EQ(big->policies[0].policy, "adaptive");
  EXPECT_NEAR(big->none_mean_seconds, 18468, 1e-9);
  EXPECT_NEAR(big->balanced_mean_seconds, 6194, 1e-9);
  for (const PolicyReport& p : big->policies) {
    SCOPED_TRACE(p.policy);
    EXPECT_GT(p.speedup_vs_none, 1.0);  // both copy expert 0 and win
    EXPECT_NEAR(p.speedup_vs_none, 18468 / p.mean_seconds, 1e-9);
    EXPECT_NEAR(p.bound_fraction, (18468 - p.mean_seconds) / (18468 - 6194), 1e-9);
  }
  o.policies = {"none", "none"};
  EXPECT_FALSE(Replay(t, o).ok());
}

// The modelled layer replaces the recorded one field by field.
TEST(Replay, ModelledLayerOverridesTheRecordedFields) {
  ReplayOptions o;
  const TraceLayerSpec recorded{"moe0", 4, 8, 16, false, true, 4};
  LayerSpec s = ModelledLayer(recorded, o);
  EXPECT_EQ(s.d_model, 8);
  EXPECT_EQ(s.d_hidden, 16);
  EXPECT_TRUE(s.bias);
  EXPECT_EQ(s.bytes_per_element, 4);
  const TraceLayerSpec imported{"moe0", 4, 0, 0, false, false, 4};  // no sizes: the default layer
  EXPECT_EQ(ModelledLayer(imported, o).d_model, 1024);
  o.layer.d_model = 4096, o.layer.d_hidden = 14336, o.layer.gated = true, o.layer.bytes_per_element = 2;
  for (const TraceLayerSpec& l : {recorded, imported}) {
    s = ModelledLayer(l, o);
    EXPECT_EQ(s.d_model, 4096);
    EXPECT_EQ(s.d_hidden, 14336);
    EXPECT_TRUE(s.gated);
    EXPECT_EQ(s.bytes_per_element, 2);
    EXPECT_EQ(s.bias, l.bias);  // not overridden
  }
  // Through the replay: the hand-computed trace (d_model 8, d_hidden 16, fp32)
  // modelled with d_hidden 32, gated, bf16: 3 matrices * 2 * 8 * 32 / 1000 =
  // 1.536 s per row, rows of 16 B: 0.5 s per link row. Step 0 (no exchange):
  // 4 rows * 1.536 * 3; step 1: 4 * (0.5 + 3 * 0.5) + 3 * 1.536 * 3.
  Trace t = TwoStepTrace();
  ReplayOptions m = Options();
  m.layer.d_hidden = 32, m.layer.gated = true, m.layer.bytes_per_element = 2;
  const auto r = Replay(t, m);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->policies[0].step_seconds[0], 4 * 1.536 * 3, 1e-12);
  EXPECT_NEAR(r->policies[0].step_seconds[1], 4 * 2.0 + 3 * 1.536 * 3, 1e-12);
}

// Largest-remainder rescaling, worked out by hand.
TEST(Replay, RescaleTokensPerRankKeepsEachRanksDistribution) {
  Trace t;
  t.world_size = 3;
  t.layers.push_back({"moe0", 4, 0, 0, false, false, 2});
  TraceStep st;
  // Rank 0 routed {3, 1, 0, 0} and kept it all; rank 1 routed {4, 4, 0, 0}
  // and kept {4, 2, 0, 0} (2 dropped); rank 2 routed nothing.
  st.routed = *CountMatrix::Make(3, 4, {3, 1, 0, 0, /**/ 4, 4, 0, 0, /**/ 0, 0, 0, 0});
  st.kept = *CountMatrix::Make(3, 4, {3, 1, 0, 0, /**/ 4, 2, 0, 0, /**/ 0, 0, 0, 0});
  t.steps = {st};
  ASSERT_TRUE(RescaleTokensPerRank(t, 5, 2).ok());  // 10 rows per rank
  // Rank 0: 3 * 10 / 4 = 7.5 and 1 * 10 / 4 = 2.5: floors 7 + 2 = 9, the one
  // row left goes to the tie's lower expert: {8, 2}.
  // Rank 1: routed {4, 4} -> {5, 5}; kept 6 of 8 -> 7.5, rounded half up to
  // 8 rows: 4 * 8 / 6 = 5.33 and 2 * 8 / 6 = 2.67: floors 5 + 2, the row left
  // to the larger remainder (expert 1): {5, 3}.
  EXPECT_EQ(t.steps[0].routed.counts, (std::vector<int64_t>{8, 2, 0, 0, 5, 5, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(t.steps[0].kept.counts, (std::vector<int64_t>{8, 2, 0, 0, 5, 3, 0, 0, 0, 0, 0, 0}));
  // Scaling to a sum the rows already have changes nothing.
  Trace same = t;
  ASSERT_TRUE(RescaleTokensPerRank(same, 10, 1).ok());
  EXPECT_EQ(same.steps[0].kept.counts, t.steps[0].kept.counts);
  EXPECT_EQ(same.steps[0].routed.counts, t.steps[0].routed.counts);
  // A trace without routed counts scales its kept ones.
  Trace kept_only = t;
  kept_only.steps[0].routed = CountMatrix{};
  ASSERT_TRUE(RescaleTokensPerRank(kept_only, 100, 1).ok());
  // {8, 2} -> {80, 20}; {5, 3} -> 62.5, 37.5: tie to expert 0: {63, 37}.
  EXPECT_EQ(kept_only.steps[0].kept.counts, (std::vector<int64_t>{80, 20, 0, 0, 63, 37, 0, 0, 0, 0, 0, 0}));
  EXPECT_FALSE(RescaleTokensPerRank(t, 0, 2).ok());
  EXPECT_FALSE(RescaleTokensPerRank(t, 1, 0).ok());
  const absl::Status big = RescaleTokensPerRank(t, int64_t{1} << 30, 1 << 11);  // 2^41 rows per rank
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.message().find("over 2^40"), std::string::npos) << big;
}

// The rows per rank the replay reports follow the plan's quotas (and its
// weight traffic is the cost model's broadcast + reduce): recomputed
// here from each step's plan (the same policy fed the same counts) with
// ForEachRoute. Adaptive's quotas are uneven on these counts (they differ
// from the even split on some step), so a replay that split evenly would
// fail.
TEST(Replay, RowsPerRankFollowThePlansQuotas) {
  SynthOptions so;
  so.steps = 30, so.experts = 16, so.world = 4, so.tokens = 512, so.top_k = 2, so.zipf = 1.4, so.drift_every = 10;
  so.seed = 9;
  const auto t = Synthesize(so);
  ASSERT_TRUE(t.ok()) << t.status();
  ReplayOptions o;
  o.world_size = 8;
  o.cluster = *ClusterPreset("h100-nvlink-ib");
  o.policies = {"adaptive", "eplb"};
  o.layer.d_model = 4096, o.layer.d_hidden = 14336, o.layer.gated = true;  // big enough to copy
  const auto r = Replay(*t, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ClusterSpec cluster = o.cluster;
  cluster.world_size = 8;
  int64_t uneven = 0;
  for (size_t p = 0; p < 2; ++p) {
    auto policy = MakePolicy(o.policies[p], cluster, ModelledLayer(t->layers[0], o), o.policy);
    ASSERT_TRUE(policy.ok());
    double weights = 0;  // the copies' broadcast + reduce, as the cost model predicts them
    for (size_t i = 0; i < t->steps.size(); ++i) {
      const CountMatrix counts = *Rehome(t->steps[i].kept, 8);
      const Plan plan = *(*policy)->Step(counts);
      const StepCost cost = (*policy)->model().Predict(counts, plan);
      weights += cost.broadcast + cost.reduce;
      std::vector<int64_t> rows(8, 0), even(8, 0);
      ForEachRoute(plan, counts, [&](int64_t, int64_t, int64_t d, int64_t n) { rows[d] += n; });
      Plan no_quotas = plan;
      no_quotas.quotas.clear();
      ForEachRoute(no_quotas, counts, [&](int64_t, int64_t, int64_t d, int64_t n) { even[d] += n; });
      uneven += rows != even;
      const double mean = static_cast<double>(counts.Total()) / 8;
      EXPECT_DOUBLE_EQ(r->policies[p].step_imbalance_after[i],
                       static_cast<double>(*std::max_element(rows.begin(), rows.end())) / mean)
          << o.policies[p] << " step " << i;
    }
    EXPECT_GT(weights, 0) << o.policies[p];  // it copied
    // Relative: the same terms summed in another order.
    EXPECT_NEAR(r->policies[p].weight_seconds, weights / t->steps.size(), 1e-12 * weights) << o.policies[p];
  }
  EXPECT_GT(uneven, 0);
}

}  // namespace
}  // namespace dynamoe::placement
