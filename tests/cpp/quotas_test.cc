// Token quotas (placement/quotas.h): WaterFill against a brute force over
// every integer split, AssignQuotas's invariants on random count matrices and
// its balance on hand-computed cases, and the Plan's handling of quotas
// (RoutesOf, Validate, Hash, traces).
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>

#include "placement/plan.h"
#include "placement/quotas.h"
#include "placement/trace.h"

namespace dynamoe::placement {
namespace {

CountMatrix Counts(int64_t P, int64_t E, std::vector<int64_t> c) { return CountMatrix::Make(P, E, c).value(); }

ClusterSpec Cluster(int64_t P, int64_t ranks_per_node = 0) {
  ClusterSpec c;
  c.world_size = P;
  c.ranks_per_node = ranks_per_node;
  return c;
}

// Rows each rank computes when the plan routes these counts.
std::vector<int64_t> RankRows(const Plan& plan, const CountMatrix& counts) {
  std::vector<int64_t> rows(counts.world_size, 0);
  ForEachRoute(plan, counts, [&](int64_t, int64_t, int64_t d, int64_t n) { rows[d] += n; });
  return rows;
}
int64_t Busiest(const std::vector<int64_t>& rows) { return *std::max_element(rows.begin(), rows.end()); }

// The spec of WaterFill, by enumeration: among all splits of `rows` into
// non-negative integers, those whose holders' loads sorted descending are
// lexicographically smallest (lowest maximum, then the next, ...); of those,
// the extra rows go to the holders that were least loaded, ties to the
// earlier holder: the lexicographically largest split with the holders
// ordered by (load, position).
std::vector<int64_t> BruteWaterFill(const std::vector<int64_t>& load, const std::vector<int32_t>& holders,
                                    int64_t rows) {
  const size_t k = holders.size();
  std::vector<size_t> key(k);
  for (size_t i = 0; i < k; ++i) key[i] = i;
  std::stable_sort(key.begin(), key.end(), [&](size_t a, size_t b) { return load[holders[a]] < load[holders[b]]; });
  std::vector<int64_t> best, best_sorted, split(k, 0);
  std::function<void(size_t, int64_t)> rec = [&](size_t i, int64_t left) {
    if (i + 1 == k) {
      split[i] = left;
      std::vector<int64_t> loads(k);
      for (size_t j = 0; j < k; ++j) loads[j] = load[holders[j]] + split[j];
      std::sort(loads.rbegin(), loads.rend());
      bool better = best.empty() || loads < best_sorted;
      if (!better && loads == best_sorted) {  // tie: prefer more rows on earlier (load, position) holders
        std::vector<int64_t> a(k), b(k);
        for (size_t j = 0; j < k; ++j) a[j] = split[key[j]], b[j] = best[key[j]];
        better = a > b;
      }
      if (better) best = split, best_sorted = loads;
      return;
    }
    for (int64_t n = 0; n <= left; ++n) {
      split[i] = n;
      rec(i + 1, left - n);
    }
  };
  rec(0, rows);
  return best;
}

TEST(WaterFill, MatchesBruteForceOnSmallCases) {
  std::mt19937 rng(7);
  int64_t cases = 0;
  for (int trial = 0; trial < 600; ++trial) {
    const int64_t P = 5;
    std::vector<int64_t> load(P);
    for (auto& l : load) l = std::uniform_int_distribution<int64_t>(0, trial % 3 == 0 ? 3 : 12)(rng);
    std::vector<int32_t> ranks = {0, 1, 2, 3, 4};
    std::shuffle(ranks.begin(), ranks.end(), rng);
    ranks.resize(std::uniform_int_distribution<size_t>(1, 4)(rng));  // holders in any rank order
    const int64_t rows = std::uniform_int_distribution<int64_t>(0, 13)(rng);
    const std::vector<int64_t> got = WaterFill(load, ranks, rows);
    const std::vector<int64_t> want = BruteWaterFill(load, ranks, rows);
    ASSERT_EQ(got, want) << "trial " << trial << " rows " << rows;
    int64_t sum = 0;
    for (int64_t t : got) {
      EXPECT_GE(t, 0);
      sum += t;
    }
    EXPECT_EQ(sum, rows);
    ++cases;
  }
  EXPECT_EQ(cases, 600);
}

TEST(WaterFill, HandCases) {
  // Loads 0, 5 (holders 0, 1): 3 rows all to holder 0; 7 rows raise holder 0
  // to 5 and split the last 2; 6 rows: level 5, the odd row to the holder
  // that was lower (holder 0).
  const std::vector<int64_t> load = {0, 5};
  EXPECT_EQ(WaterFill(load, {0, 1}, 3), (std::vector<int64_t>{3, 0}));
  EXPECT_EQ(WaterFill(load, {0, 1}, 7), (std::vector<int64_t>{6, 1}));
  EXPECT_EQ(WaterFill(load, {0, 1}, 6), (std::vector<int64_t>{6, 0}));
  EXPECT_EQ(WaterFill(load, {1, 0}, 6), (std::vector<int64_t>{0, 6}));
  // Equal loads: the earlier holder gets the odd row, whatever its rank.
  EXPECT_EQ(WaterFill({2, 2, 2}, {2, 0, 1}, 4), (std::vector<int64_t>{2, 1, 1}));
  EXPECT_EQ(WaterFill({2, 2, 2}, {}, 4), std::vector<int64_t>{});
  EXPECT_EQ(WaterFill({2, 2, 2}, {1, 2}, 0), (std::vector<int64_t>{0, 0}));
}

// A random plan (owners by Plan::None, random copies) and skewed counts.
struct Random {
  Plan plan;
  CountMatrix counts;
};
Random MakeRandom(std::mt19937& rng, int64_t P, int64_t per_rank) {
  const int64_t E = P * per_rank;
  Random r{Plan::None(P, E), {}};
  std::vector<int64_t> c(P * E);
  for (int64_t s = 0; s < P; ++s)
    for (int64_t e = 0; e < E; ++e) {
      const int64_t hot = e % 3 == 0 ? 40 : 6;  // a few hot experts
      c[s * E + e] = std::uniform_int_distribution<int64_t>(0, hot)(rng) * (rng() % 5 == 0 ? 0 : 1);
    }
  r.counts = Counts(P, E, c);
  for (int64_t e = 0; e < E; ++e) {
    if (rng() % 2) continue;
    for (int32_t q = 0; q < P; ++q)
      if (q != r.plan.owner[e] && rng() % 2) r.plan.copies[e].push_back(q);
  }
  return r;
}

TEST(AssignQuotas, PiecesCoverEverySourceAndGoOnlyToHolders) {
  std::mt19937 rng(11);
  int64_t checked = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t P = 2 + trial % 6, per_rank = 1 + trial % 3;
    Random r = MakeRandom(rng, P, per_rank);
    for (bool keep : {true, false}) {
      Plan plan = r.plan;
      AssignQuotas(plan, r.counts, Cluster(P), keep);
      ASSERT_TRUE(plan.Validate().ok()) << plan.Validate();  // pieces > 0, to holders only
      // One entry per expert (empty for experts without copies), or none at all.
      ASSERT_TRUE(plan.quotas.empty() || static_cast<int64_t>(plan.quotas.size()) == plan.num_experts);
      for (int64_t e = 0; e < plan.num_experts; ++e) {
        EXPECT_EQ(plan.HasQuota(e), !plan.copies[e].empty()) << "expert " << e;
        if (!plan.HasQuota(e)) continue;
        const Quota& q = plan.quotas[e];
        for (int64_t s = 0; s < P; ++s) {
          EXPECT_EQ(q.SourceRows(s), r.counts.at(s, e)) << "expert " << e << " source " << s;
          for (int32_t k = q.start[s]; k < q.start[s + 1]; ++k) {
            if (k > q.start[s]) EXPECT_LT(q.dest[k - 1], q.dest[k]) << "one piece per holder, ascending";
            // keep_own_rows: a holder's rows all stay on it.
            if (keep && plan.Holds(s, e)) EXPECT_EQ(q.dest[k], s) << "expert " << e << " source " << s;
          }
          ++checked;
        }
      }
      // Every row is computed exactly once.
      const std::vector<int64_t> rows = RankRows(plan, r.counts);
      int64_t sum = 0;
      for (int64_t n : rows) sum += n;
      EXPECT_EQ(sum, r.counts.Total());
    }
  }
  EXPECT_GT(checked, 1000);  // the random plans had copies
}

TEST(AssignQuotas, BusiestRankNeverAboveTheEvenSplit) {
  std::mt19937 rng(13);
  int64_t lower = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t P = 2 + trial % 7, per_rank = 1 + trial % 2;
    Random r = MakeRandom(rng, P, per_rank);
    const int64_t even = Busiest(RankRows(r.plan, r.counts));  // no quotas: the split rule
    for (bool keep : {true, false}) {
      Plan plan = r.plan;
      AssignQuotas(plan, r.counts, Cluster(P), keep);
      const int64_t busiest = Busiest(RankRows(plan, r.counts));
      EXPECT_LE(busiest, even) << "trial " << trial << " keep_own_rows " << keep << " " << plan.Summary();
      lower += busiest < even ? 1 : 0;
    }
  }
  EXPECT_GT(lower, 100);  // and often strictly better
}

TEST(AssignQuotas, WaterFillsOntoTheLessLoadedHolder) {
  // 3 ranks, one expert each. Expert 0 (owner 0) has a copy on rank 1; rank 1
  // also computes its own expert 1 (10 rows from itself); rank 2 sends 20 rows
  // to expert 0 and 4 to its own expert 2.
  //   split rule: rank 2's 20 rows -> 10 to rank 0, 10 to rank 1:
  //     rows 0: 10, 1: 10 + 10 = 20, 2: 4; busiest 20.
  //   quotas: rank 1 already has 10, so the 20 rows raise ranks 0 and 1 to a
  //     common (20 + 0 + 10) / 2 = 15: rank 0 gets 15, rank 1 gets 5:
  //     rows 15, 15, 4; busiest 15.
  const CountMatrix counts = Counts(3, 3, {0, 0, 0, 0, 10, 0, 20, 0, 4});
  Plan plan = Plan::None(3, 3);
  plan.copies[0] = {1};
  EXPECT_EQ(RankRows(plan, counts), (std::vector<int64_t>{10, 20, 4}));
  AssignQuotas(plan, counts, Cluster(3));
  EXPECT_EQ(RankRows(plan, counts), (std::vector<int64_t>{15, 15, 4}));
  const Quota& q = plan.quotas[0];
  EXPECT_EQ(q.start, (std::vector<int32_t>{0, 0, 0, 2}));
  EXPECT_EQ(q.dest, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(q.rows, (std::vector<int64_t>{15, 5}));
  EXPECT_FALSE(plan.HasQuota(1));
  EXPECT_FALSE(plan.HasQuota(2));
}

TEST(AssignQuotas, NeverAboveTheSplitRuleWhenCopiesCross) {
  // 3 ranks, one expert each: expert 0 (owner 0) has a copy on rank 2, expert
  // 1 (owner 1) a copy on rank 0; rank 1 sends 3 rows to expert 0, rank 2
  // sends 3 to expert 1.
  //   split rule: rank 1's 3 rows -> 1 to rank 0, 2 to rank 2 (the remainder
  //     row at position (1 - 1) mod 2); rank 2's 3 rows -> 2 to rank 1, 1 to
  //     rank 0: rows 2, 2, 2.
  //   a greedy fill of expert 0 first, onto empty ranks, gives rank 0 2 rows
  //     and rank 2 1; expert 1 then finds rank 0 at 2 and puts all 3 rows on
  //     rank 1: rows 2, 3, 1, and re-filling each expert alone changes
  //     nothing. The quotas must not be worse than the rule: busiest 2.
  const CountMatrix counts = Counts(3, 3, {0, 0, 0, 3, 0, 0, 0, 3, 0});
  Plan plan = Plan::None(3, 3);
  plan.copies[0] = {2};
  plan.copies[1] = {0};
  EXPECT_EQ(RankRows(plan, counts), (std::vector<int64_t>{2, 2, 2}));
  for (bool keep : {true, false}) {
    AssignQuotas(plan, counts, Cluster(3), keep);
    EXPECT_EQ(RankRows(plan, counts), (std::vector<int64_t>{2, 2, 2})) << "keep_own_rows " << keep;
  }
}

TEST(AssignQuotas, KeepOwnRowsOrMoveThem) {
  // 2 ranks. Expert 0 (owner 0) has a copy on rank 1, which sends it 10 rows
  // and 10 more to its own expert 1. Rank 0 sends nothing.
  //   keep_own_rows: rank 1 keeps its 10 rows of expert 0: rows 0, 20 (the
  //     split rule's too).
  //   all rows water-filled: rank 1 is at 10 from expert 1, so expert 0's 10
  //     rows all go to rank 0: rows 10, 10.
  const CountMatrix counts = Counts(2, 2, {0, 0, 10, 10});
  Plan plan = Plan::None(2, 2);
  plan.copies[0] = {1};
  AssignQuotas(plan, counts, Cluster(2), true);
  EXPECT_EQ(RankRows(plan, counts), (std::vector<int64_t>{0, 20}));
  AssignQuotas(plan, counts, Cluster(2), false);
  EXPECT_EQ(RankRows(plan, counts), (std::vector<int64_t>{10, 10}));
  EXPECT_EQ(plan.quotas[0].dest, (std::vector<int32_t>{0}));  // rank 1's own rows leave it
  EXPECT_EQ(plan.quotas[0].rows, (std::vector<int64_t>{10}));
}

TEST(AssignQuotas, DeterministicAndIndependentOfEarlierQuotas) {
  std::mt19937 rng(17);
  for (int trial = 0; trial < 50; ++trial) {
    Random r = MakeRandom(rng, 5, 2);
    Plan a = r.plan, b = r.plan;
    AssignQuotas(a, r.counts, Cluster(5));
    AssignQuotas(b, r.counts, Cluster(5), false);  // b starts from other quotas
    AssignQuotas(b, r.counts, Cluster(5));
    EXPECT_EQ(a.quotas, b.quotas);
    EXPECT_EQ(a.Hash(), b.Hash());
  }
}

TEST(AssignQuotas, SourcesPreferAHolderOnTheirNode) {
  // 4 ranks, 2 per node. Expert 2 (owner 2, node 1) has a copy on rank 0
  // (node 0); ranks 1 (node 0) and 3 (node 1) send it 10 rows each. The fill
  // gives each holder 10. In rank order rank 1 would meet holder 2 first
  // (holder order: owner first); on their nodes rank 1 goes to rank 0 and
  // rank 3 to rank 2: no row crosses nodes.
  const CountMatrix counts = Counts(4, 4, {0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 10, 0});
  Plan plan = Plan::None(4, 4);
  plan.copies[2] = {0};
  auto pieces = [&](const Plan& p, int64_t s) {
    std::vector<std::pair<int64_t, int64_t>> out;
    RoutesOf(p, s, 2, counts.at(s, 2), [&](int64_t, int64_t, int64_t d, int64_t n) { out.emplace_back(d, n); });
    return out;
  };
  using Pieces = std::vector<std::pair<int64_t, int64_t>>;
  AssignQuotas(plan, counts, Cluster(4, 2));
  EXPECT_EQ(pieces(plan, 1), (Pieces{{0, 10}}));
  EXPECT_EQ(pieces(plan, 3), (Pieces{{2, 10}}));
  // One node: sources in rank order, holders in holder order.
  AssignQuotas(plan, counts, Cluster(4));
  EXPECT_EQ(pieces(plan, 1), (Pieces{{2, 10}}));
  EXPECT_EQ(pieces(plan, 3), (Pieces{{0, 10}}));
}

// Expert 0 of 4 ranks (owner 0) with copies on 1 and 3; source 2 sends 9 rows:
// 5 to rank 1, 4 to rank 3.
Plan HandQuotaPlan() {
  Plan p = Plan::None(4, 4);
  p.copies[0] = {1, 3};
  p.quotas.assign(4, Quota{});
  p.quotas[0].start = {0, 0, 0, 2, 2};
  p.quotas[0].dest = {1, 3};
  p.quotas[0].rows = {5, 4};
  return p;
}

TEST(Quota, RoutesOfFollowsACoveringQuotaElseTheSplitRule) {
  const Plan p = HandQuotaPlan();
  ASSERT_TRUE(p.Validate().ok()) << p.Validate();
  using Pieces = std::vector<std::pair<int64_t, int64_t>>;
  auto routes = [&](int64_t source, int64_t rows) {
    Pieces out;
    RoutesOf(p, source, 0, rows, [&](int64_t, int64_t, int64_t d, int64_t n) { out.emplace_back(d, n); });
    return out;
  };
  EXPECT_EQ(routes(2, 9), (Pieces{{1, 5}, {3, 4}}));
  // 10 rows are not the quota's 9: the split rule over holders 0, 1, 3, the
  // remainder row to position (i - 2) mod 3 == 0, i.e. i = 2 (rank 3).
  EXPECT_EQ(routes(2, 10), (Pieces{{0, 3}, {1, 3}, {3, 4}}));
  EXPECT_EQ(routes(1, 6), (Pieces{{1, 6}}));  // the quota has no rows for source 1: a holder keeps its own
}

TEST(Quota, ValidateRejectsMalformedQuotas) {
  Plan p = HandQuotaPlan();
  p.quotas[0].dest = {1, 2};  // rank 2 holds no copy of expert 0
  EXPECT_EQ(p.Validate().message(),
            "plan: expert 0 quota sends 4 rows to rank 2, expected rows > 0 to a rank holding the expert");
  p = HandQuotaPlan();
  p.quotas[0].rows = {9, 0};
  EXPECT_FALSE(p.Validate().ok());
  p = HandQuotaPlan();
  p.quotas[0].start = {0, 0, 2, 2};  // offsets for 3 sources in a world of 4
  EXPECT_FALSE(p.Validate().ok());
  p = HandQuotaPlan();
  p.quotas[0].start = {0, 2, 1, 2, 2};
  EXPECT_FALSE(p.Validate().ok());
  p = HandQuotaPlan();
  p.quotas.resize(3);
  EXPECT_FALSE(p.Validate().ok());
}

TEST(Quota, HashCoversQuotas) {
  const Plan p = HandQuotaPlan();
  Plan moved = p, redirected = p, none = p;
  moved.quotas[0].rows = {4, 5};
  redirected.quotas[0].dest = {0, 3};
  none.quotas.clear();
  EXPECT_NE(moved.Hash(), p.Hash());
  EXPECT_NE(redirected.Hash(), p.Hash());
  EXPECT_NE(none.Hash(), p.Hash());
  EXPECT_NE(moved.Hash(), redirected.Hash());
  EXPECT_EQ(HandQuotaPlan().Hash(), p.Hash());
  // The prediction is not part of it.
  moved = p;
  moved.predicted_step_seconds = 1;
  EXPECT_EQ(moved.Hash(), p.Hash());
}

TEST(Quota, TracesRecordCopiesAndTheQuotasFollowFromThem) {
  // A policy's plan with quotas, recorded: the trace keeps owners and
  // copies, not quotas; the plan read back routes every row to a holder (the
  // split rule), and AssignQuotas on it and the recorded counts gives the
  // same quotas again (they are a function of copies, counts and cluster).
  std::mt19937 rng(19);
  Random r = MakeRandom(rng, 4, 2);
  r.plan.copies[1] = {2, 3};  // at least one copied expert
  AssignQuotas(r.plan, r.counts, Cluster(4), false);
  ASSERT_TRUE(r.plan.HasQuota(1));
  TraceStep step;
  step.kept = step.routed = r.counts;
  step.plan = r.plan;
  std::string bytes = EncodeTraceHeader(4, 0, {}, {TraceLayerSpec{"moe0", 8, 4, 8, false, false, 4}});
  bytes += EncodeStepRecord(step);
  const absl::StatusOr<Trace> t = ParseTrace(bytes);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->steps.size(), 1u);
  ASSERT_TRUE(t->steps[0].plan.has_value());
  Plan read = *t->steps[0].plan;
  EXPECT_EQ(read.owner, r.plan.owner);
  EXPECT_EQ(read.copies, r.plan.copies);
  EXPECT_FALSE(read.HasQuota(1));
  std::vector<int64_t> rows = RankRows(read, t->steps[0].kept);
  int64_t sum = 0;
  for (int64_t n : rows) sum += n;
  EXPECT_EQ(sum, r.counts.Total());
  ForEachRoute(read, t->steps[0].kept, [&](int64_t, int64_t e, int64_t d, int64_t) {
    EXPECT_TRUE(read.Holds(d, e)) << "expert " << e << " rank " << d;
  });
  AssignQuotas(read, t->steps[0].kept, Cluster(4), false);
  EXPECT_EQ(read.Hash(), r.plan.Hash());
}

}  // namespace
}  // namespace dynamoe::placement
