// The four policies behind MakePolicy (policy.h); one .cc file each.
#pragma once

#include <limits>
#include <string>
#include <vector>

#include "placement/policy.h"

namespace dynamoe::placement {

class NonePolicy : public Policy {
 public:
  NonePolicy(ClusterSpec c, LayerSpec l, PolicyOptions o) : Policy(PlacementPolicy::kNone, c, l, std::move(o)) {}

 protected:
  void Decide(const CountMatrix& counts) override;
};

class FasterMoEPolicy : public Policy {
 public:
  FasterMoEPolicy(ClusterSpec c, LayerSpec l, PolicyOptions o)
      : Policy(PlacementPolicy::kFasterMoE, c, l, std::move(o)) {}

 protected:
  void Decide(const CountMatrix& counts) override;
};

class AdaptivePolicy : public Policy {
 public:
  AdaptivePolicy(ClusterSpec c, LayerSpec l, PolicyOptions o)
      : Policy(PlacementPolicy::kAdaptive, c, l, std::move(o)) {}

 protected:
  void Decide(const CountMatrix& counts) override;

 private:
  // Adds copies to `state` (plain expert parallelism on entry) round by round.
  void Search(LoadState& state);
  bool has_previous_ = false;
  // A lower bound of a seed's prediction on `state` (any routing).
  double SeedLowerBound(LoadState& state);
  // The same bound for the replica set `copies` ([E]), without editing `state`.
  double CopiesLowerBound(LoadState& state, const std::vector<std::vector<int32_t>>& copies);
  std::vector<std::vector<int32_t>> previous_copies_, next_copies_, best_copies_;
  std::vector<double> load_, weight_send_, weight_recv_;
  std::vector<int64_t> lower_rows_;
  // Search's scratch, kept across steps.
  std::vector<int32_t> owned_start_, owned_, scratch_ranks_, copied_, idlest_, trial_;
  std::vector<std::pair<int64_t, int64_t>> pairs_, applied_;
};

class EplbPolicy : public Policy {
 public:
  EplbPolicy(ClusterSpec c, LayerSpec l, PolicyOptions o)
      : Policy(PlacementPolicy::kEplb, c, l, std::move(o)), average_state_(model_) {}

 protected:
  void Observe(const CountMatrix& counts) override;
  void Decide(const CountMatrix& counts) override;

 private:
  std::vector<double> average_;  // moving average of the count matrix (interval > 1)
  CountMatrix average_counts_;   // ... rounded, and the state on it
  LoadState average_state_;
};

// The policies' choices as functions of a state (plain expert parallelism on
// entry; the chosen copies on return, split rule), for adaptive's seeds.
// copies_per_rank: the memory budget's (Policy::CopiesAllowedPerRank).
void FasterMoEShadowing(LoadState& state, const PolicyOptions& options, int64_t copies_per_rank, std::string* why);
// load: per expert (eplb's moving average, or the state's loads). With
// skip_at finite, returns false (state left plain) when no subset of the
// placed replicas can be predicted below skip_at on the state's counts.
bool EplbReplicas(LoadState& state, const std::vector<double>& load, const PolicyOptions& options,
                  int64_t copies_per_rank, std::string* why,
                  double skip_at = std::numeric_limits<double>::infinity());

// Experts ordered by load, heaviest first; ties by lower index. With `first`
// >= 0, only the first `first` of that order.
std::vector<int64_t> ExpertsByLoad(const std::vector<int64_t>& loads, int64_t first = -1);

}  // namespace dynamoe::placement
