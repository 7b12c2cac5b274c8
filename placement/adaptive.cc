// adaptive: greedy search on the cost model. Starting from plain expert
// parallelism, each round scores a few candidate actions on the incremental
// LoadState and applies the one that lowers the predicted step time most:
//   shadow(e)    copy e onto every rank (tokens for e stay local everywhere);
//   copy(e, r)   one more copy of e on rank r (r's tokens for e stay local and
//                other senders split theirs over the holders).
// Candidates each round: the 4 hottest experts not yet on every rank, and the
// 4 hottest experts held by the busiest rank; copy targets are the least
// loaded non-holder and the non-holder sending the most of e. This keeps a
// decision O(rounds * 24 * world) after an O(world * experts) start.
// It stops when no candidate lowers the prediction, or a budget is reached
// (DYNAMOE_SHADOW_MAX distinct copied experts, the memory budget per rank).
// Hysteresis: the previous plan is kept unless the new one is predicted at
// least `hysteresis` faster on these counts (and the previous is no slower
// than no copies), so plans do not flap between near-equal choices.
#include <algorithm>

#include "absl/strings/str_format.h"
#include "common/log.h"
#include "placement/policies.h"

namespace dynamoe::placement {
namespace {

constexpr int kCandidates = 4;
constexpr int kMaxRounds = 64;

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

Plan AdaptivePolicy::Search(const CountMatrix& counts, double* none_seconds) {
  const int64_t P = counts.world_size, E = counts.num_experts;
  LoadState state(model_, counts, Plan::None(P, E));
  double current = state.Evaluate();
  *none_seconds = current;
  if (P < 2) return state.plan();
  const std::vector<int64_t> order = ExpertsByLoad(counts.ExpertLoads());
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
  auto score = [&](Action a) {
    const std::vector<int32_t> before = state.plan().copies[a.expert];
    if (a.rank < 0)
      state.Shadow(a.expert);
    else
      state.AddCopy(a.expert, a.rank);
    a.seconds = state.Evaluate();
    state.SetCopies(a.expert, before);
    return a;
  };

  for (int round = 0; round < kMaxRounds; ++round) {
    std::vector<int64_t> experts;
    for (int64_t e : order) {
      if (static_cast<int64_t>(experts.size()) >= kCandidates) break;
      if (state.plan().NumHolders(e) < P) experts.push_back(e);
    }
    const int64_t busiest = state.BusiestRank();
    int taken = 0;
    for (int64_t e : order) {
      if (taken >= kCandidates) break;
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
  return state.plan();
}

Plan AdaptivePolicy::Decide(const CountMatrix& counts) {
  double none_seconds = 0;
  Plan plan = Search(counts, &none_seconds);
  plan.predicted_step_seconds = model_.Predict(counts, plan).total;
  if (has_previous_ && !(previous_ == plan)) {
    const double previous_seconds = model_.Predict(counts, previous_).total;
    if (previous_seconds <= none_seconds &&
        plan.predicted_step_seconds > previous_seconds * (1 - options_.hysteresis)) {
      DYNAMOE_LOG(kDebug) << LogPrefix() << " keeping the previous plan (" << previous_.Summary() << ", "
                          << previous_seconds << " s): the new one (" << plan.Summary() << ", "
                          << plan.predicted_step_seconds << " s) is not " << options_.hysteresis * 100
                          << "% faster";
      plan = previous_;
      plan.predicted_step_seconds = previous_seconds;
    }
  }
  DYNAMOE_LOG(kDebug) << LogPrefix() << " predicted " << none_seconds << " s without copies, "
                      << plan.predicted_step_seconds << " s with " << plan.Summary();
  previous_ = plan;
  has_previous_ = true;
  return plan;
}

}  // namespace dynamoe::placement
