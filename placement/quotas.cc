#include "placement/quotas.h"

#include <algorithm>
#include <numeric>

#include "placement/cost_model.h"

namespace dynamoe::placement {

std::vector<int64_t> WaterFill(const std::vector<int64_t>& load, const std::vector<int32_t>& holders, int64_t rows) {
  const int64_t k = static_cast<int64_t>(holders.size());
  std::vector<int64_t> targets(k, 0);
  if (k == 0 || rows <= 0) return targets;
  std::vector<int64_t> order(k);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return load[holders[a]] < load[holders[b]]; });
  // m: how many of the least-loaded holders the rows reach.
  int64_t m = 1, below = load[holders[order[0]]];  // below: sum of the m lowest loads
  while (m < k) {
    const int64_t next = load[holders[order[m]]];
    if (next * m - below > rows) break;  // raising the m lowest to `next` would need more rows
    below += next;
    ++m;
  }
  const int64_t level = (rows + below) / m, extra = (rows + below) % m;
  for (int64_t j = 0; j < m; ++j) targets[order[j]] = level - load[holders[order[j]]] + (j < extra ? 1 : 0);
  return targets;
}

namespace {

// Meets each holder's target: own rows first, then same-node sources, then
// any source, sources in rank order.
Quota BuildPieces(const CountMatrix& counts, const ClusterSpec& cluster, int64_t e,
                  const std::vector<int32_t>& holders, const std::vector<int64_t>& targets) {
  const int64_t P = counts.world_size, H = static_cast<int64_t>(holders.size());
  std::vector<int64_t> left(P), need(targets);
  for (int64_t s = 0; s < P; ++s) left[s] = counts.at(s, e);
  std::vector<std::vector<std::pair<int32_t, int64_t>>> by_source(P);
  auto take = [&](int64_t s, int64_t i) {
    const int64_t n = std::min(left[s], need[i]);
    if (n <= 0) return;
    by_source[s].emplace_back(holders[i], n);
    left[s] -= n;
    need[i] -= n;
  };
  for (int64_t i = 0; i < H; ++i) take(holders[i], i);
  if (cluster.MultiNode())
    for (int64_t s = 0; s < P; ++s)
      for (int64_t i = 0; i < H && left[s] > 0; ++i)
        if (cluster.SameNode(s, holders[i])) take(s, i);
  int64_t i = 0;
  for (int64_t s = 0; s < P; ++s)
    while (left[s] > 0 && i < H) {
      take(s, i);
      if (need[i] == 0) ++i;
    }
  Quota q;
  q.start.assign(P + 1, 0);
  for (int64_t s = 0; s < P; ++s) {
    auto& pieces = by_source[s];
    // Holder order within a source, merging repeats (a holder can be met twice).
    std::sort(pieces.begin(), pieces.end());
    for (size_t j = 0; j < pieces.size(); ++j) {
      if (!q.dest.empty() && static_cast<int64_t>(q.dest.size()) > q.start[s] && q.dest.back() == pieces[j].first) {
        q.rows.back() += pieces[j].second;
        continue;
      }
      q.dest.push_back(pieces[j].first);
      q.rows.push_back(pieces[j].second);
    }
    q.start[s + 1] = static_cast<int32_t>(q.dest.size());
  }
  return q;
}

}  // namespace

void AssignQuotas(Plan& plan, const CountMatrix& counts, const ClusterSpec& cluster, bool keep_own_rows) {
  const int64_t P = counts.world_size, E = counts.num_experts;
  plan.quotas.assign(E, Quota{});
  std::vector<int64_t> load(P, 0), totals(E, 0);
  for (int64_t s = 0; s < P; ++s)
    for (int64_t e = 0; e < E; ++e) totals[e] += counts.at(s, e);
  std::vector<int64_t> copied;
  for (int64_t e = 0; e < E; ++e) {
    if (plan.copies[e].empty())
      load[plan.owner[e]] += totals[e];
    else
      copied.push_back(e);
  }
  if (copied.empty()) return;
  std::stable_sort(copied.begin(), copied.end(), [&](int64_t a, int64_t b) {
    if (plan.copies[a].size() != plan.copies[b].size()) return plan.copies[a].size() < plan.copies[b].size();
    return totals[a] > totals[b];
  });
  std::vector<std::vector<int32_t>> holders(E);
  std::vector<std::vector<int64_t>> targets(E);
  for (int64_t e : copied) {
    holders[e].push_back(plan.owner[e]);
    holders[e].insert(holders[e].end(), plan.copies[e].begin(), plan.copies[e].end());
  }
  for (int pass = 0; pass < 2; ++pass)
    for (int64_t e : copied) {
      auto& t = targets[e];
      if (pass > 0)
        for (size_t i = 0; i < t.size(); ++i) load[holders[e][i]] -= t[i];
      int64_t rows = totals[e];
      std::vector<int64_t> own(holders[e].size(), 0);
      if (keep_own_rows)
        for (size_t i = 0; i < own.size(); ++i) {
          own[i] = counts.at(holders[e][i], e);
          load[holders[e][i]] += own[i];
          rows -= own[i];
        }
      t = WaterFill(load, holders[e], rows);
      for (size_t i = 0; i < t.size(); ++i) {
        load[holders[e][i]] += t[i];
        t[i] += own[i];
      }
    }
  for (int64_t e : copied) plan.quotas[e] = BuildPieces(counts, cluster, e, holders[e], targets[e]);
}

double AssignBestQuotas(Plan& plan, const CountMatrix& counts, const CostModel& model) {
  AssignQuotas(plan, counts, model.cluster(), true);
  double best = LoadState(model, counts, plan).Evaluate();
  if (!plan.HasCopies()) return best;
  Plan all = plan;
  AssignQuotas(all, counts, model.cluster(), false);
  const double t = LoadState(model, counts, all).Evaluate();
  if (t < best) {
    plan.quotas = std::move(all.quotas);
    best = t;
  }
  return best;
}

}  // namespace dynamoe::placement
