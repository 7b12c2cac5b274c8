// adaptive: replicas chosen by marginal gain on the cost model, with quotas.
// Owners keep their experts (and optimizer state); each copy costs its weight
// broadcast and gradient reduce in the model. Starting from plain expert
// parallelism, each round adds the one copy with the best predicted gain per
// byte moved (the copy's weights out and gradient back, plus the token rows
// it adds to the exchanges, if any), where a copy is scored with the
// expert's rows water-filled over its holders given every other rank's rows
// (LoadState::Try with Routing::kBalanced: the quota it would get).
// Candidates each round (not every expert x rank, as issue 23 asks: only
// copies that can lower the slowest term are scored, which is cheaper and,
// with the seeds below, property-tested never worse than eplb/fastermoe):
//   - the experts with the most rows on the busiest rank (only those can
//     lower the compute term: a copy moves rows only off its expert's holders);
//   - when the exchange weighs (>= 5% of the step), the expert that loads the
//     slowest link end most (the rank with the highest send or receive time):
//     received rows of an expert it owns (copied onto the non-holder sending
//     the most of it), or the expert it sends most rows of (copied onto it);
//   - targets: the least-loaded rank without the expert, over all ranks; with
//     several nodes, node-first: the least-loaded one on the owner's node is
//     a candidate too and wins ties (its weights cross no node boundary).
// When no copy lowers the prediction because several ranks sit near the top,
// up to 3 more copies that shed the most rows from the busiest rank are made
// (look-ahead), and those after the best prediction are taken back.
// It stops when nothing helps, when the busiest rank's rows are within
// DYNAMOE_BALANCE_TOLERANCE of the mean, or at a budget: DYNAMOE_SHADOW_MAX
// experts copied, the memory budget per rank.
// Seeds: the replica sets fastermoe and eplb choose on the same counts are
// scored too (with their quotas) and the fastest of the three kept, so
// adaptive is never predicted slower than either (property-tested); a seed
// whose lower bound cannot beat the search is not scored.
// A round costs O(world) per candidate (up to five) after the one pass over
// the counts that Policy::Step makes anyway; nothing is allocated once the
// state's buffers have grown.
// Hysteresis: the previous replica set, its quotas reassigned on these
// counts, is kept unless the new one (with its quotas) is predicted at least
// `hysteresis` faster (and the previous is no slower than no copies), so
// plans do not flap between near-equal choices.
#include <algorithm>

#include "absl/strings/str_format.h"
#include "common/log.h"
#include "placement/policies.h"
#include "placement/quotas.h"

namespace dynamoe::placement {
namespace {

constexpr int kOnBusiest = 2;  // experts with the most rows on the busiest rank
constexpr int kIdlest = 8;     // least-loaded ranks kept per round
constexpr int kLookahead = 3;  // copies made past a round without gain

}  // namespace

void AdaptivePolicy::Search(LoadState& state) {
  const Plan& plan = state.plan();
  const int64_t P = plan.world_size, E = plan.num_experts;
  if (P < 2) return;
  const ClusterSpec& cluster = model_.cluster();
  const bool explain = LogEnabled(LogLevel::kDebug);
  std::string why;
  const int64_t per_rank = CopiesAllowedPerRank();
  const double weight_bytes = model_.layer().ExpertBytes() * (model_.options().training ? 2.0 : 1.0);
  const double bytes_per_row = model_.layer().RowBytes() * model_.Exchanges();
  const std::vector<int64_t>& loads = state.expert_loads();
  const std::vector<int64_t>& rows = state.rows();
  int64_t total = 0;
  for (int64_t e = 0; e < E; ++e) total += loads[e];
  const double mean = static_cast<double>(total) / static_cast<double>(P);
  // Experts each rank owns (CSR), and the copied experts so far.
  owned_start_.assign(P + 1, 0);
  for (int64_t e = 0; e < E; ++e) ++owned_start_[plan.owner[e] + 1];
  for (int64_t r = 0; r < P; ++r) owned_start_[r + 1] += owned_start_[r];
  owned_.resize(E);
  {
    std::vector<int32_t>& next = scratch_ranks_;
    next.assign(owned_start_.begin(), owned_start_.end() - 1);
    for (int64_t e = 0; e < E; ++e) owned_[next[plan.owner[e]]++] = static_cast<int32_t>(e);
  }
  copied_.clear();
  StepCost now = state.Cost();
  double current = now.total;

  struct Candidate {
    int64_t expert = -1, rank = -1;
    double seconds = 0, score = 0;
  };
  // Several ranks can sit near the top: one copy then moves the busiest rank
  // below the next without lowering the step, and only the next copy pays.
  // So when no copy lowers the prediction, up to kLookahead copies that
  // shed the most rows from the busiest rank (per byte) are still made, and
  // the copies after the best prediction seen are taken back at the end.
  applied_.clear();
  double best_seen = current;
  size_t best_count = 0;
  int lookahead = kLookahead;
  for (int64_t round = 0;; ++round) {
    const int64_t busiest = state.BusiestRank();
    if (static_cast<double>(rows[busiest]) <= options_.balance_tolerance * mean) {
      if (explain)
        why += absl::StrFormat(" stopped: busiest rank %d has %d rows, within %.3g of the mean %.1f;", busiest,
                               rows[busiest], options_.balance_tolerance, mean);
      break;
    }
    const bool can_copy_new = static_cast<int64_t>(copied_.size()) < options_.max_copied;
    // The least-loaded ranks with room for a copy, ascending (ties: lower rank).
    idlest_.clear();
    for (int64_t r = 0; r < P; ++r) {
      if (state.CopiesOn(r) >= per_rank) continue;
      auto at = std::upper_bound(idlest_.begin(), idlest_.end(), static_cast<int32_t>(r),
                                 [&](int32_t a, int32_t b) { return rows[a] != rows[b] ? rows[a] < rows[b] : a < b; });
      if (static_cast<int64_t>(idlest_.size()) < kIdlest) {
        idlest_.insert(at, static_cast<int32_t>(r));
      } else if (at != idlest_.end()) {
        idlest_.insert(at, static_cast<int32_t>(r));
        idlest_.pop_back();
      }
    }
    auto room = [&](int64_t r) { return state.CopiesOn(r) < per_rank; };
    auto idlest_without = [&](int64_t e, int64_t lo, int64_t hi) {  // over ranks [lo, hi)
      for (int32_t r : idlest_)
        if (r >= lo && r < hi && !plan.Holds(r, e)) return static_cast<int64_t>(r);
      int64_t best = -1;
      for (int64_t r = lo; r < hi; ++r)
        if (room(r) && !plan.Holds(r, e) && (best < 0 || rows[r] < rows[best])) best = r;
      return best;
    };
    // Candidate (expert, rank) pairs.
    pairs_.clear();
    auto add_targets = [&](int64_t e) {
      if (plan.NumHolders(e) >= P) return;
      if (plan.copies[e].empty() && !can_copy_new) return;
      if (cluster.MultiNode()) {
        const int64_t node = cluster.NodeOf(plan.owner[e]), per_node = cluster.ranks_per_node;
        const int64_t local = idlest_without(e, node * per_node, std::min(P, (node + 1) * per_node));
        if (local >= 0) pairs_.push_back({e, local});
      }
      const int64_t any = idlest_without(e, 0, P);
      if (any >= 0 && (pairs_.empty() || pairs_.back().first != e || pairs_.back().second != any))
        pairs_.push_back({e, any});
    };
    // Experts with the most rows on the busiest rank.
    int64_t top[kOnBusiest], top_rows[kOnBusiest];
    int n_top = 0;
    auto consider = [&](int64_t e, int64_t on_b) {
      if (on_b <= 0 || plan.NumHolders(e) >= P) return;
      int i = n_top < kOnBusiest ? n_top++ : kOnBusiest;
      if (i == kOnBusiest && !(on_b > top_rows[kOnBusiest - 1])) return;
      if (i == kOnBusiest) i = kOnBusiest - 1;
      top[i] = e;
      top_rows[i] = on_b;
      for (; i > 0 && (top_rows[i] > top_rows[i - 1] || (top_rows[i] == top_rows[i - 1] && top[i] < top[i - 1])); --i) {
        std::swap(top[i], top[i - 1]);
        std::swap(top_rows[i], top_rows[i - 1]);
      }
    };
    for (int32_t k = owned_start_[busiest]; k < owned_start_[busiest + 1]; ++k) {
      const int32_t e = owned_[k];
      consider(e, plan.copies[e].empty() ? loads[e] : state.RowsOf(e, busiest));
    }
    for (int32_t e : copied_)
      if (plan.owner[e] != busiest && plan.Holds(busiest, e)) consider(e, state.RowsOf(e, busiest));
    // The second expert only when it can shed about as much (each Try is O(world)).
    for (int i = 0; i < n_top; ++i)
      if (i == 0 || top_rows[i] * 2 >= top_rows[0]) add_targets(top[i]);
    // The slowest link end: its heaviest expert.
    int64_t slow = 0;
    double slow_s = -1;
    bool receiving = true;
    for (int64_t r = 0; r < P; ++r) {
      const double snd = state.SendSeconds(r), rcv = state.RecvSeconds(r);
      if (rcv > slow_s) slow = r, slow_s = rcv, receiving = true;
      if (snd > slow_s) slow = r, slow_s = snd, receiving = false;
    }
    // Only when the exchange weighs (>= 5% of the step): else its gain is small.
    if (slow_s > 0 && now.all_to_all >= 0.05 * now.total) {
      int64_t pick = -1, pick_rows = 0, pick_rank = -1;
      if (receiving) {
        // Rows of its experts that arrive from other ranks (owned plain
        // experts; copied ones it holds are rarely the heaviest link).
        for (int32_t k = owned_start_[slow]; k < owned_start_[slow + 1]; ++k) {
          const int32_t e = owned_[k];
          if (!plan.copies[e].empty() || plan.NumHolders(e) >= P) continue;
          const int64_t in = loads[e] - state.Column(e)[slow];
          if (in > pick_rows) pick = e, pick_rows = in;
        }
        if (pick >= 0 && can_copy_new) {
          const int64_t* col = state.Column(pick);
          for (int64_t r = 0; r < P; ++r)
            if (room(r) && !plan.Holds(r, pick) && col[r] > 0 && (pick_rank < 0 || col[r] > col[pick_rank]))
              pick_rank = r;
        }
      } else if (room(slow)) {
        const int64_t* row = state.counts().counts.data() + slow * E;
        for (int64_t e = 0; e < E; ++e)
          if (row[e] > pick_rows && !plan.Holds(slow, e) && (can_copy_new || !plan.copies[e].empty()))
            pick = e, pick_rows = row[e];
        pick_rank = slow;
      }
      if (pick >= 0 && pick_rank >= 0) pairs_.push_back({pick, pick_rank});
    }
    if (pairs_.empty()) {
      if (explain) why += " stopped: no expert on the busiest rank or slowest link can be copied within the budgets;";
      break;
    }
    // Score each pair once.
    Candidate best, shed;
    double shed_score = 0;
    state.Watch(busiest);
    for (size_t i = 0; i < pairs_.size(); ++i) {
      const auto [e, r] = pairs_[i];
      bool seen = false;
      for (size_t j = 0; j < i && !seen; ++j) seen = pairs_[j] == pairs_[i];
      if (seen) continue;
      trial_ = plan.copies[e];
      trial_.insert(std::upper_bound(trial_.begin(), trial_.end(), static_cast<int32_t>(r)), static_cast<int32_t>(r));
      const double t = state.Try(e, trial_, Routing::kBalanced);
      const double bytes =
          weight_bytes + std::max<double>(0.0, static_cast<double>(state.TriedOffRankDelta()) * bytes_per_row);
      const int64_t rows_shed = rows[busiest] - state.TriedWatchedRows();
      if (rows_shed > 0 && (shed.expert < 0 || rows_shed / bytes > shed_score)) {
        shed = Candidate{e, r, t, 0}, shed_score = rows_shed / bytes;
        state.KeepTried(e, trial_, 1);  // the look-ahead copy, made as scored
      }
      const double gain = current - t;
      if (!(gain > current * 1e-9)) continue;
      const double score = gain / bytes;
      if (best.expert < 0 || score > best.score) {
        best = Candidate{e, r, t, score};
        state.KeepTried(e, trial_);  // its routing, so the copy is not filled twice
      }
    }
    state.Watch(-1);
    bool kept = true;
    if (best.expert < 0) {
      if (lookahead > 0 && shed.expert >= 0) {
        --lookahead;
        best = shed;
        kept = false;
      } else {
        if (explain) why += " stopped: no candidate copy lowers the prediction;";
        break;
      }
    }
    if (explain)
      why += absl::StrFormat(" copy expert %d to rank %d: %.4g s -> %.4g s;", best.expert, best.rank, current,
                             best.seconds);
    if (plan.copies[best.expert].empty()) copied_.push_back(static_cast<int32_t>(best.expert));
    state.AddKept(kept ? 0 : 1);
    applied_.emplace_back(best.expert, best.rank);
    now = state.Cost();
    current = now.total;
    if (current < best_seen * (1 - 1e-9)) {
      best_seen = current;
      best_count = applied_.size();
      lookahead = kLookahead;
    }
  }
  // Take back the look-ahead copies that did not pay.
  if (explain && applied_.size() > best_count)
    why += absl::StrFormat(" %d look-ahead copies taken back;", applied_.size() - best_count);
  while (applied_.size() > best_count) {
    state.RemoveCopy(applied_.back().first, applied_.back().second, Routing::kBalanced);
    applied_.pop_back();
  }
  if (explain) DYNAMOE_LOG(kDebug) << LogPrefix() << " search:" << why;
}

namespace {

// Gives every expert the copies in `copies` ([E]; split rule).
void SetAllCopies(LoadState& state, const std::vector<std::vector<int32_t>>& copies) {
  for (size_t e = 0; e < copies.size(); ++e)
    if (state.plan().copies[e] != copies[e]) state.SetCopies(static_cast<int64_t>(e), copies[e]);
}

}  // namespace

double AdaptivePolicy::SeedLowerBound(LoadState& state) {
  // No routing computes fewer rows on its busiest rank than the mean, than
  // an owner's uncopied experts, or than an expert's rows per holder; the
  // weights' terms are the copies'.
  const Plan& plan = state.plan();
  const std::vector<int64_t>& loads = state.expert_loads();
  const int64_t P = plan.world_size;
  int64_t total = 0, most = 0;
  lower_rows_.assign(P, 0);
  for (int64_t e = 0; e < plan.num_experts; ++e) {
    total += loads[e];
    if (plan.copies[e].empty()) lower_rows_[plan.owner[e]] += loads[e];
    const int64_t holders = plan.NumHolders(e);  // they compute all its rows between them
    most = std::max(most, (loads[e] + holders - 1) / holders);
  }
  for (int64_t r = 0; r < P; ++r) most = std::max(most, lower_rows_[r]);
  most = std::max(most, (total + P - 1) / P);
  return model_.Finish(0.0, most, state.Cost().broadcast).total;
}

double AdaptivePolicy::CopiesLowerBound(LoadState& state, const std::vector<std::vector<int32_t>>& copies) {
  // SeedLowerBound's rows terms for `copies`, without editing the state; the
  // weights' broadcast per rank as Cost() counts it (sent and received copies).
  const Plan& plan = state.plan();
  const std::vector<int64_t>& loads = state.expert_loads();
  const int64_t P = plan.world_size;
  int64_t total = 0, most = 0;
  lower_rows_.assign(P, 0);
  weight_send_.assign(P, 0.0);
  weight_recv_.assign(P, 0.0);
  for (int64_t e = 0; e < plan.num_experts; ++e) {
    total += loads[e];
    const std::vector<int32_t>& c = copies[e];
    if (c.empty()) {
      lower_rows_[plan.owner[e]] += loads[e];
      continue;
    }
    const int64_t holders = static_cast<int64_t>(c.size()) + 1;
    most = std::max(most, (loads[e] + holders - 1) / holders);
    for (int32_t r : c) {
      const double t = model_.ExpertSeconds(plan.owner[e], r);
      weight_send_[plan.owner[e]] += t;
      weight_recv_[r] += t;
    }
  }
  double bcast = 0;
  for (int64_t r = 0; r < P; ++r) {
    most = std::max(most, lower_rows_[r]);
    bcast = std::max({bcast, weight_send_[r], weight_recv_[r]});
  }
  most = std::max(most, (total + P - 1) / P);
  return model_.Finish(0.0, most, bcast).total;
}

void AdaptivePolicy::Decide(const CountMatrix&) {
  LoadState& state = state_;  // plain expert parallelism on these counts
  const Plan& plan = state.plan();
  const int64_t E = plan.num_experts;
  const double none_seconds = state.Evaluate();
  const bool explain = LogEnabled(LogLevel::kDebug);
  Search(state);
  double new_seconds = state.AssignBestQuotas();
  // Seeds: the replica sets fastermoe and eplb choose on these counts, with
  // their quotas, so adaptive is never predicted slower than either (its own
  // search may stop early: balance tolerance, budgets). A seed is scored only
  // when its lower bound (its weights' broadcast and reduce, and every rank
  // at the mean rows or its uncopied experts' rows) is below the best so far.
  state.SaveQuotas(1);
  best_copies_ = plan.copies;
  const char* chosen = "the search's";
  bool moved = false;
  // fastermoe shadows whole experts: a seed with any copy sends P - 1 of an
  // expert's weights from its owner, and no rank computes fewer than the
  // mean rows. Below that bound it is not even built.
  const ClusterSpec& cluster = model_.cluster();
  const double bytes = model_.layer().ExpertBytes();
  const double min_expert_s = std::min(cluster.intra_node_latency_s + bytes / cluster.intra_node_bw,
                                       cluster.inter_node_latency_s + bytes / cluster.inter_node_bw);
  const int64_t P = plan.world_size;
  int64_t total = 0;
  for (int64_t e = 0; e < E; ++e) total += state.expert_loads()[e];
  const bool shadow_can_win =
      P > 1 && std::min(options_.max_copied, CopiesAllowedPerRank()) > 0 &&
      model_.Finish(0.0, (total + P - 1) / P, static_cast<double>(P - 1) * min_expert_s).total * (1 - 1e-9) <
          new_seconds;
  for (int k = shadow_can_win ? 0 : 1; k < 2; ++k) {
    for (int64_t e = 0; e < E; ++e)
      if (!plan.copies[e].empty()) state.SetCopies(e, {});
    moved = true;
    if (k == 0) {
      FasterMoEShadowing(state, options_, CopiesAllowedPerRank(), nullptr);
    } else {
      load_.assign(state.expert_loads().begin(), state.expert_loads().end());
      if (!EplbReplicas(state, load_, options_, CopiesAllowedPerRank(), nullptr, new_seconds)) continue;
    }
    if (plan.copies == best_copies_ || !(SeedLowerBound(state) < new_seconds)) continue;
    bool any = false;
    for (int64_t e = 0; e < E && !any; ++e) any = !plan.copies[e].empty();
    if (!any) continue;
    const double t = state.AssignBestQuotas();
    if (t < new_seconds) {
      new_seconds = t;
      chosen = k == 0 ? "fastermoe's" : "eplb's";
      best_copies_ = plan.copies;
      state.SaveQuotas(1);
      moved = false;
    }
  }
  if (moved) state.RestoreCopies(1, best_copies_);
  if (explain) DYNAMOE_LOG(kDebug) << LogPrefix() << " " << chosen << " replica set: " << new_seconds << " s";
  // The previous set is re-scored only when it can be kept: its lower bound
  // (no quota gives its busiest rank fewer rows than the bound; its weights'
  // terms are exact) below no copies' prediction and within the hysteresis of
  // the new set. The margin covers the bound's other summation order.
  bool rescore = has_previous_ && previous_copies_ != plan.copies;
  if (rescore && static_cast<int64_t>(previous_copies_.size()) == E) {
    const double lower = CopiesLowerBound(state, previous_copies_) * (1 - 1e-9);
    rescore = lower <= none_seconds && new_seconds > lower * (1 - options_.hysteresis);
  }
  if (rescore) {
    // The previous replica set with its quotas reassigned on these counts.
    state.SaveQuotas(1);
    next_copies_ = plan.copies;
    SetAllCopies(state, previous_copies_);
    const double previous_seconds = state.AssignBestQuotas();
    if (previous_seconds <= none_seconds && new_seconds > previous_seconds * (1 - options_.hysteresis)) {
      DYNAMOE_LOG(kDebug) << LogPrefix() << " keeping the previous plan (" << plan.Summary() << ", "
                          << previous_seconds << " s): the new one (" << new_seconds << " s) is not "
                          << options_.hysteresis * 100 << "% faster";
    } else {
      state.RestoreCopies(1, next_copies_);
    }
  }
  DYNAMOE_LOG(kDebug) << LogPrefix() << " predicted " << none_seconds << " s without copies, "
                      << state.AssignBestQuotas() << " s with " << plan.Summary();
  previous_copies_ = plan.copies;  // element-wise: buffers reused
  has_previous_ = true;
}

}  // namespace dynamoe::placement
