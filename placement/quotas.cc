#include "placement/quotas.h"

#include <algorithm>

#include "placement/load_state.h"

namespace dynamoe::placement {

void WaterFillInto(const int64_t* load, int64_t n, int64_t rows, int64_t* targets, int32_t* order) {
  for (int64_t i = 0; i < n; ++i) {
    targets[i] = 0;
    order[i] = static_cast<int32_t>(i);
  }
  if (n == 0 || rows <= 0) return;
  // Holders by load, earlier holder first on ties (a stable sort).
  auto before = [&](int32_t a, int32_t b) { return load[a] != load[b] ? load[a] < load[b] : a < b; };
  if (n <= 16) {
    for (int64_t i = 1; i < n; ++i)
      for (int64_t j = i; j > 0 && before(order[j], order[j - 1]); --j) std::swap(order[j], order[j - 1]);
  } else {
    std::sort(order, order + n, before);
  }
  // m: how many of the least-loaded holders the rows reach.
  int64_t m = 1, below = load[order[0]];  // below: sum of the m lowest loads
  while (m < n) {
    const int64_t next = load[order[m]];
    if (next * m - below > rows) break;  // raising the m lowest to `next` would need more rows
    below += next;
    ++m;
  }
  const int64_t level = (rows + below) / m, extra = (rows + below) % m;
  for (int64_t j = 0; j < m; ++j) targets[order[j]] = level - load[order[j]] + (j < extra ? 1 : 0);
}

std::vector<int64_t> WaterFill(const std::vector<int64_t>& load, const std::vector<int32_t>& holders, int64_t rows) {
  const int64_t n = static_cast<int64_t>(holders.size());
  std::vector<int64_t> per_holder(n), targets(n);
  std::vector<int32_t> order(n);
  for (int64_t i = 0; i < n; ++i) per_holder[i] = load[holders[i]];
  WaterFillInto(per_holder.data(), n, rows, targets.data(), order.data());
  return targets;
}

namespace {

// Copies the state's quotas of copied experts into plan (the others none).
void TakeQuotas(Plan& plan, const Plan& from) {
  bool any = false;
  for (int64_t e = 0; e < from.num_experts && !any; ++e) any = !from.copies[e].empty();
  if (!any) {
    plan.quotas.clear();
    return;
  }
  plan.quotas.resize(from.num_experts);
  for (int64_t e = 0; e < from.num_experts; ++e) {
    if (from.copies[e].empty()) {
      plan.quotas[e].start.clear();
      plan.quotas[e].dest.clear();
      plan.quotas[e].rows.clear();
    } else {
      plan.quotas[e] = from.quotas[e];  // reuses the plan's buffers
    }
  }
}

}  // namespace

void AssignQuotas(Plan& plan, const CountMatrix& counts, const ClusterSpec& cluster, bool keep_own_rows) {
  // Only the cluster's nodes matter to the quotas; the layer is a placeholder.
  const CostModel model(cluster, LayerSpec{1, 1, false, false, 4});
  Plan bare = plan;
  bare.quotas.clear();
  LoadState state(model, counts, bare);
  state.AssignQuotas(keep_own_rows);
  TakeQuotas(plan, state.plan());
}

double AssignBestQuotas(Plan& plan, const CountMatrix& counts, const CostModel& model) {
  LoadState state(model, counts, plan);
  return AssignBestQuotas(plan, state);
}

double AssignBestQuotas(Plan& plan, LoadState& state) {
  for (int64_t e = 0; e < plan.num_experts; ++e)
    if (state.plan().copies[e] != plan.copies[e]) state.SetCopies(e, plan.copies[e]);
  const double best = state.AssignBestQuotas();
  TakeQuotas(plan, state.plan());
  return best;
}

}  // namespace dynamoe::placement
