// The replay engine on traces whose predicted times are worked out by hand.
#include <gtest/gtest.h>

#include <limits>

#include "placement/calibrate.h"
#include "placement/replay.h"
#include "placement/replay_inputs.h"

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
// 7 layers x 4 policies = 28 work items spread over 1 to 24 threads (more
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
  ASSERT_EQ(one->policies.size(), 4u);
  EXPECT_GT(one->policies[2].copies_per_step, 0);  // adaptive copied: the sums hold more than zeros
  for (int64_t threads : {2, 3, 7, 24, 0}) {
    o.threads = threads;
    const auto r = Replay(*t, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->step_imbalance_before, one->step_imbalance_before) << threads << " threads";
    for (size_t p = 0; p < 4; ++p) {
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

}  // namespace
}  // namespace dynamoe::placement

namespace dynamoe::placement {
namespace {

// Phase times that are exactly linear in the rows: the fit recovers the
// coefficients, the implied rates follow from the layer sizes, and the
// held-out error is 0.
TEST(Calibrate, RecoversALinearCostModel) {
  Trace t;
  t.rank = 0;
  t.phase_names = {"gate", "dispatch", "experts", "combine"};
  t.layers.push_back({"moe0", 4, 8, 16, false, false, 4});
  for (int64_t s = 0; s < 20; ++s) {
    TraceStep st;
    st.step = s;
    // Rank 0 keeps 2 + s rows on expert 0 and sends s % 5 rows to expert 2 (rank 1).
    st.kept = *CountMatrix::Make(2, 4, {2 + s, 0, s % 5, 0, /**/ 0, 0, 1, 0});
    st.routed = st.kept;
    const double rows = 2.0 + s, sent = s % 5;
    st.phase_seconds = {0.001, 0.5 * (1e-3 * sent + 2e-4), 4e-3 * rows + 1e-3, 0.5 * (1e-3 * sent + 2e-4)};
    t.steps.push_back(st);
  }
  const auto c = Calibrate(t, 0.25);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->warmup_steps, 2);  // min(10, 20 / 10)
  EXPECT_EQ(c->fit_steps, 14);
  EXPECT_EQ(c->heldout_steps, 4);
  ASSERT_EQ(c->fits.size(), 2u);
  EXPECT_NEAR(c->fits[0].slope, 4e-3, 1e-12);
  EXPECT_NEAR(c->fits[0].intercept, 1e-3, 1e-12);
  EXPECT_NEAR(c->fits[1].slope, 1e-3, 1e-12);
  EXPECT_NEAR(c->fits[1].intercept, 2e-4, 1e-12);
  EXPECT_NEAR(c->step_median_error, 0, 1e-9);
  EXPECT_NEAR(c->work_median_error, 0, 1e-9);
  EXPECT_NEAR(c->flops, 2.0 * 2 * 8 * 16 / 4e-3, 1e-3);    // FLOP per row / seconds per row
  EXPECT_NEAR(c->bytes_per_second, 2.0 * 8 * 4 / 1e-3, 1e-6);  // two exchanges of 32-byte rows

  // A few fit steps 5x slower (a preempted rank): the fit follows the
  // typical step, where least squares would be dragged far off.
  Trace noisy = t;
  for (int64_t s : {4, 8, 12}) noisy.steps[s].phase_seconds[2] *= 5;
  const auto robust = Calibrate(noisy, 0.25);
  ASSERT_TRUE(robust.ok()) << robust.status();
  EXPECT_NEAR(robust->fits[0].slope, 4e-3, 4e-5);
  EXPECT_LT(robust->fits[0].heldout_median_error, 0.01);

  Trace imported = t;
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
