// adaptive: greedy search on the cost model. Starting from plain expert
// parallelism, each round scores a few candidate actions on the incremental
// LoadState and applies the one that lowers the predicted step time most:
//   shadow(e)    copy e onto every rank (tokens for e stay local everywhere);
//   copy(e, r)   one more copy of e on rank r (r's tokens for e stay local and
//                other senders split theirs over the holders).
// Candidates each round: the 2 hottest experts not yet on every rank, and the
// hottest expert held by the busiest rank; copy targets are the least
// loaded non-holder and the non-holder sending the most of e. Each candidate
// is scored by LoadState::Try without changing the state, so a decision is
// O(rounds * 9 * world * holders) after one pass over the counts.
// It stops when no candidate lowers the prediction, or a budget is reached:
// DYNAMOE_SHADOW_MAX actions (so at most that many experts copied), the
// memory budget per rank.
// Hysteresis: the previous plan is kept unless the new one is predicted at
// least `hysteresis` faster on these counts (and the previous is no slower
// than no copies), so plans do not flap between near-equal choices.
#include <algorithm>

#include "absl/strings/str_format.h"
#include "common/log.h"
#include "placement/policies.h"

namespace dynamoe::placement {
namespace {

constexpr int kHottest = 2;     // hottest experts not yet everywhere
constexpr int kOnBusiest = 1;   // hottest expert held by the busiest rank

struct Action {
  int64_t expert = -1;
  int64_t rank = -1;  // -1: shadow on every rank
  double seconds = 0;
};

std::string Describe(const Action& a) {
  return a.rank < 0 ? absl::StrFormat("shadow expert %d", a.expert)
                    : absl::StrFormat("copy expert %d to rank %d", a.expert, a.rank);
}

}  // namespace

void AdaptivePolicy::Search(LoadState& state) {
  const int64_t P = state.plan().world_size, E = state.plan().num_experts;
  double current = state.Evaluate();
  if (P < 2) return;
  const std::vector<int64_t> order = ExpertsByLoad(state.expert_loads());
  const int64_t per_rank = CopiesAllowedPerRank();
  const bool explain = LogEnabled(LogLevel::kDebug);
  std::string why;
  std::vector<char> copied(E, 0);
  int64_t num_copied = 0;

  auto allowed = [&](int64_t e, int64_t rank) {
    if (!copied[e] && num_copied >= options_.max_copied) return false;
    if (rank >= 0) return state.CopiesOn(rank) < per_rank;
    for (int64_t r = 0; r < P; ++r)
      if (!state.plan().Holds(r, e) && state.CopiesOn(r) >= per_rank) return false;
    return true;
  };
  std::vector<int32_t> trial;
  auto score = [&](Action a) {
    trial = state.plan().copies[a.expert];
    if (a.rank < 0) {
      trial.clear();
      for (int32_t r = 0; r < P; ++r)
        if (r != state.plan().owner[a.expert]) trial.push_back(r);
    } else {
      trial.insert(std::upper_bound(trial.begin(), trial.end(), static_cast<int32_t>(a.rank)),
                   static_cast<int32_t>(a.rank));
    }
    a.seconds = state.Try(a.expert, trial);
    return a;
  };

  for (int64_t round = 0;; ++round) {
    if (round >= options_.max_copied) {
      if (explain) why += absl::StrFormat(" stopped: budget of %d actions reached;", options_.max_copied);
      break;
    }
    std::vector<int64_t> experts;
    for (int64_t e : order) {
      if (static_cast<int64_t>(experts.size()) >= kHottest) break;
      if (state.plan().NumHolders(e) < P) experts.push_back(e);
    }
    const int64_t busiest = state.BusiestRank();
    int taken = 0;
    for (int64_t e : order) {
      if (taken >= kOnBusiest) break;
      if (state.plan().Holds(busiest, e) && state.plan().NumHolders(e) < P &&
          std::find(experts.begin(), experts.end(), e) == experts.end()) {
        experts.push_back(e);
        ++taken;
      }
    }
    Action best;
    best.seconds = current;
    bool budget_blocked = false;
    for (int64_t e : experts) {
      if (state.TopNonHolderSender(e) < 0) continue;  // every sender holds e: no copy helps
      const int64_t targets[3] = {-1, state.IdlestNonHolder(e), state.TopNonHolderSender(e)};
      for (int i = 0; i < 3; ++i) {
        if (i > 0 && (targets[i] < 0 || (i == 2 && targets[2] == targets[1]))) continue;
        if (!allowed(e, targets[i])) {
          budget_blocked = true;
          continue;
        }
        const Action a = score(Action{e, targets[i], 0});
        if (a.seconds < best.seconds) best = a;
      }
    }
    if (best.expert < 0 || !(best.seconds < current * (1 - 1e-9))) {
      if (explain)
        why += budget_blocked ? " stopped: the remaining helpful copies exceed the budget;"
                              : " stopped: no candidate lowers the prediction (hottest experts' copies would cost "
                                "more in weights than they save);";
      break;
    }
    if (explain) why += absl::StrFormat(" %s: %.4g s -> %.4g s;", Describe(best), current, best.seconds);
    if (best.rank < 0)
      state.Shadow(best.expert);
    else
      state.AddCopy(best.expert, best.rank);
    if (!copied[best.expert]) ++num_copied;
    copied[best.expert] = 1;
    current = best.seconds;
  }
  if (explain) DYNAMOE_LOG(kDebug) << LogPrefix() << " search:" << why;
}

Plan AdaptivePolicy::Decide(const CountMatrix& counts) {
  LoadState state(model_, counts, Plan::None(counts.world_size, counts.num_experts));
  const double none_seconds = state.Evaluate();
  Search(state);
  Plan plan = state.plan();
  plan.predicted_step_seconds = state.Evaluate();
  if (has_previous_ && !(previous_ == plan)) {
    // The previous plan on these counts: edit the state rather than re-read the matrix.
    for (int64_t e = 0; e < plan.num_experts; ++e)
      if (plan.copies[e] != previous_.copies[e]) state.SetCopies(e, previous_.copies[e]);
    const double previous_seconds = state.Evaluate();
    if (previous_seconds <= none_seconds &&
        plan.predicted_step_seconds > previous_seconds * (1 - options_.hysteresis)) {
      DYNAMOE_LOG(kDebug) << LogPrefix() << " keeping the previous plan (" << previous_.Summary() << ", "
                          << previous_seconds << " s): the new one (" << plan.Summary() << ", "
                          << plan.predicted_step_seconds << " s) is not " << options_.hysteresis * 100
                          << "% faster";
      plan = previous_;
      plan.predicted_step_seconds = previous_seconds;  // same model, same counts
    }
  }
  DYNAMOE_LOG(kDebug) << LogPrefix() << " predicted " << none_seconds << " s without copies, "
                      << plan.predicted_step_seconds << " s with " << plan.Summary();
  previous_ = plan;
  has_previous_ = true;
  return plan;
}

}  // namespace dynamoe::placement
