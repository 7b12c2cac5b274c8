// eplb: redundant replicas in the manner of DeepSeek's EPLB, adapted to
// training with fixed owners (the owner's optimizer keeps the expert).
//  1. Loads: a moving average of the count matrix, weight 2 / (interval + 1)
//     per step, so it spans about one re-plan interval.
//  2. Replicate: DYNAMOE_SHADOW_MAX times, give one more replica to the expert
//     with the highest load per replica (load / holders), never beyond one
//     copy per rank.
//  3. Pack: replicas, heaviest load-per-replica first, each go to the least
//     loaded rank that does not hold that expert yet and has a free slot
//     (ceil(replicas / world) slots per rank, fewer under the memory budget).
//     When ranks_per_node splits the group into nodes, the node is chosen
//     first (least loaded node with a free eligible rank), then the rank in it.
//  4. Cost: in training every copy's weights move every step (the owner's
//     optimizer changes them) and its gradient comes back, so each replica,
//     lightest first, is dropped when the cost model predicts the step no
//     slower without it. Each edited expert's rows are scored water-filled
//     over its holders (its quota, as the step will run), which is also
//     O(world + holders) per edit where the even split is O(world x holders).
// Re-planned every DYNAMOE_PLACEMENT_INTERVAL steps; the plan holds between.
// With an interval of 1 the average is the step's counts: no averaging, and
// the scoring runs on the policy's state of this step (no second pass).
#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"
#include "common/log.h"
#include "placement/policies.h"

namespace dynamoe::placement {

void EplbPolicy::Observe(const CountMatrix& counts) {
  if (options_.interval <= 1) return;  // weight 1: the average is the counts
  const double w = 2.0 / (static_cast<double>(options_.interval) + 1.0);
  if (average_.size() != counts.counts.size()) {
    average_.assign(counts.counts.begin(), counts.counts.end());
    return;
  }
  for (size_t i = 0; i < average_.size(); ++i)
    average_[i] = (1 - w) * average_[i] + w * static_cast<double>(counts.counts[i]);
}

bool EplbReplicas(LoadState& state, const std::vector<double>& load, const PolicyOptions& options,
                  int64_t copies_per_rank, std::string* why, double skip_at) {
  const int64_t P = state.plan().world_size, E = state.plan().num_experts;
  const ClusterSpec& cluster = state.model().cluster();
  Plan plan = Plan::None(P, E);
  const int64_t replicas = P > 1 ? std::min(options.max_copied, E * (P - 1)) : 0;
  const int64_t slots = std::min((replicas + P - 1) / std::max<int64_t>(P, 1), copies_per_rank);
  // 2. Replicate.
  std::vector<int64_t> holders(E, 1);
  for (int64_t i = 0; i < replicas && slots > 0; ++i) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e)
      if (holders[e] < P && load[e] > 0 && (best < 0 || load[e] / holders[e] > load[best] / holders[best])) best = e;
    if (best < 0) break;
    ++holders[best];
  }
  // 3. Pack.
  struct Item {
    int64_t expert;
    double weight;
  };
  std::vector<Item> items;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t i = 1; i < holders[e]; ++i) items.push_back({e, load[e] / holders[e]});
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.weight > b.weight; });
  std::vector<double> rank_load(P, 0.0);
  for (int64_t e = 0; e < E; ++e) rank_load[plan.owner[e]] += load[e] / holders[e];
  std::vector<int64_t> used(P, 0);
  const bool by_node = cluster.MultiNode() && P % cluster.ranks_per_node == 0;
  const int64_t nodes = by_node ? P / cluster.ranks_per_node : 1, per_node = by_node ? cluster.ranks_per_node : P;
  std::vector<std::pair<int64_t, int64_t>> placed;  // (expert, rank), heaviest first
  for (const Item& item : items) {
    auto eligible = [&](int64_t r) { return used[r] < slots && !plan.Holds(r, item.expert); };
    int64_t best_node = -1;
    double best_node_load = 0;
    for (int64_t n = 0; n < nodes; ++n) {
      double node_load = 0;
      bool any = false;
      for (int64_t r = n * per_node; r < (n + 1) * per_node; ++r) {
        node_load += rank_load[r];
        any = any || eligible(r);
      }
      if (any && (best_node < 0 || node_load < best_node_load)) best_node = n, best_node_load = node_load;
    }
    if (best_node < 0) continue;
    int64_t best = -1;
    for (int64_t r = best_node * per_node; r < (best_node + 1) * per_node; ++r)
      if (eligible(r) && (best < 0 || rank_load[r] < rank_load[best])) best = r;
    auto& c = plan.copies[item.expert];
    c.insert(std::upper_bound(c.begin(), c.end(), static_cast<int32_t>(best)), static_cast<int32_t>(best));
    rank_load[best] += item.weight;
    ++used[best];
    placed.emplace_back(item.expert, best);
  }
  if (skip_at < std::numeric_limits<double>::infinity() && !placed.empty()) {
    // Dropping replicas only raises an expert's rows per holder and its
    // owner's rows, so no kept subset computes fewer rows on its busiest
    // rank than this bound (and dropping all is plain expert parallelism).
    const std::vector<int64_t>& loads = state.expert_loads();
    int64_t total = 0, most = 0;
    std::vector<int64_t> owned(P, 0);
    for (int64_t e = 0; e < E; ++e) {
      total += loads[e];
      if (holders[e] == 1) owned[plan.owner[e]] += loads[e];
      most = std::max(most, (loads[e] + holders[e] - 1) / holders[e]);
    }
    for (int64_t r = 0; r < P; ++r) most = std::max(most, owned[r]);
    most = std::max(most, (total + P - 1) / P);
    if (state.model().Finish(0.0, most, 0.0).total >= skip_at) return false;
  }
  // 4. Keep the heaviest k replicas for the k the cost model likes best (fewest
  // on ties): removing them lightest first scores every k in one pass, and
  // catches the case where only dropping all of them lowers the slowest rank.
  for (int64_t e = 0; e < E; ++e)
    if (!plan.copies[e].empty()) state.SetCopies(e, plan.copies[e], Routing::kBalanced);
  std::vector<double> seconds(placed.size() + 1);
  seconds[placed.size()] = state.Evaluate();
  for (size_t k = placed.size(); k-- > 0;) {
    state.RemoveCopy(placed[k].first, placed[k].second, Routing::kBalanced);
    seconds[k] = state.Evaluate();
  }
  const size_t keep = std::min_element(seconds.begin(), seconds.end()) - seconds.begin();
  for (size_t k = 0; k < keep; ++k) state.AddCopy(placed[k].first, placed[k].second, Routing::kBalanced);
  if (why) {
    for (size_t k = 0; k < placed.size(); ++k)
      *why += absl::StrFormat(" replica of expert %d (load %.1f) on rank %d %s;", placed[k].first,
                              load[placed[k].first], placed[k].second,
                              k < keep ? "kept" : "dropped (its weights cost more than it saves)");
    *why += absl::StrFormat(" %.4g s without copies, %.4g s with them (each expert's rows water-filled);", seconds[0], seconds[keep]);
  }
  return true;
}

void EplbPolicy::Decide(const CountMatrix& counts) {
  const int64_t P = counts.world_size, E = counts.num_experts;
  std::vector<double> load(E, 0.0);
  LoadState* state = &state_;
  if (options_.interval <= 1) {
    for (int64_t e = 0; e < E; ++e) load[e] = static_cast<double>(state_.expert_loads()[e]);
  } else {
    average_counts_.world_size = P;
    average_counts_.num_experts = E;
    average_counts_.counts.resize(average_.size());
    for (size_t i = 0; i < average_.size(); ++i) average_counts_.counts[i] = std::llround(average_[i]);
    for (int64_t s = 0; s < P; ++s)
      for (int64_t e = 0; e < E; ++e) load[e] += average_[s * E + e];
    average_state_.Reset(average_counts_);
    state = &average_state_;
  }
  const bool explain = LogEnabled(LogLevel::kDebug);
  std::string why;
  EplbReplicas(*state, load, options_, CopiesAllowedPerRank(), explain ? &why : nullptr);
  if (state != &state_)
    for (int64_t e = 0; e < E; ++e)
      if (!state->plan().copies[e].empty()) state_.SetCopies(e, state->plan().copies[e]);
  if (explain)
    DYNAMOE_LOG(kDebug) << LogPrefix() << " on the " << (state == &state_ ? "counts" : "moving average") << ": "
                        << state->plan().Summary() << ";" << why;
}

}  // namespace dynamoe::placement
