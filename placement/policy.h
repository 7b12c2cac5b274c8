// Placement policies: from each step's count matrix to a Plan.
//
//   none       plain expert parallelism.
//   fastermoe  FasterMoE's shadowing criterion, with its defects fixed
//              (fastermoe.cc lists each difference from the original).
//   adaptive   copies chosen by marginal gain on the cost model, with quotas in
//              the loop, seeded with fastermoe's and eplb's sets (adaptive.cc).
//   eplb       DeepSeek-EPLB-style redundant replicas (eplb.cc).
//
// A policy is stateful (moving averages, the previous plan), deterministic,
// and reads no clock or randomness: every rank that feeds it the same counts
// gets the same plans. At debug log level each decision is explained.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "placement/cost_model.h"
#include "placement/count_matrix.h"
#include "placement/load_state.h"
#include "placement/plan.h"
#include "placement/spec.h"

namespace dynamoe::placement {

// The policies; a value is its index in PolicyNames() (layer signatures send it).
enum class PlacementPolicy { kNone, kFasterMoE, kAdaptive, kEplb };
// The one list of policy names: none, fastermoe, adaptive, eplb
// (DYNAMOE_PLACEMENT's choices, MakePolicy's and the layers' names).
const std::vector<std::string>& PolicyNames();
absl::string_view PolicyName(PlacementPolicy policy);
// Exact name; InvalidArgument `placement: unknown policy "x"; expected one of
// none, fastermoe, adaptive, eplb` otherwise.
absl::StatusOr<PlacementPolicy> ParsePolicy(absl::string_view name);

struct PolicyOptions {
  int64_t interval = 1;            // steps between re-plans (DYNAMOE_PLACEMENT_INTERVAL)
  int64_t max_copied = 8;          // experts copied per layer (eplb: redundant replicas) (DYNAMOE_SHADOW_MAX)
  double memory_budget_bytes = 0;  // copies' weights + gradients per rank; 0 = no limit
  double hysteresis = 0.05;        // adaptive keeps its plan unless a new one is this much faster
  double balance_tolerance = 1.05; // adaptive stops once busiest / mean rows is within this (DYNAMOE_BALANCE_TOLERANCE)
  double alpha = 2;                // d_hidden / d_model when LayerSpec::d_hidden is 0 (fastermoe)
  CostOptions cost;
  std::string layer = "moe";  // for log lines
};

class Policy {
 public:
  Policy(PlacementPolicy kind, ClusterSpec cluster, LayerSpec layer, PolicyOptions options);
  virtual ~Policy() = default;

  PlacementPolicy kind() const { return kind_; }
  const std::string& name() const { return name_; }
  const CostModel& model() const { return model_; }
  const PolicyOptions& options() const { return options_; }
  // Replaces the cost model's rates (DYNAMOE_CALIBRATE=online); the world
  // size and node layout stay the cluster's.
  void SetCluster(const ClusterSpec& cluster) {
    model_ = CostModel(cluster, model_.layer(), model_.options());
    state_.ReadRates();  // it keeps the model's rates
  }

  // Feeds this step's counts and returns the plan in force: a new one every
  // `interval` steps (and on the first), else the last one with its
  // prediction re-checked on these counts. InvalidArgument when the counts'
  // shape differs from the cluster's world size or earlier steps.
  absl::StatusOr<Plan> Step(const CountMatrix& counts);

 protected:
  // Called every step before a possible re-plan (e.g. to update averages).
  virtual void Observe(const CountMatrix&) {}
  // A new plan for these counts: called with state_ holding plain expert
  // parallelism on them; leaves the chosen copies in state_ (any routing:
  // Step then assigns the quotas and the prediction).
  virtual void Decide(const CountMatrix& counts) = 0;
  // Bytes of copies a rank may hold under the memory budget (weights + gradients).
  int64_t CopiesAllowedPerRank() const;
  // The debug-log explanation prefix: "<layer> placement <policy> step N:".
  std::string LogPrefix() const;

  CostModel model_;
  PolicyOptions options_;
  int64_t step_ = 0;
  // This step's state, reused across steps (its buffers are kept).
  LoadState state_;

 private:
  PlacementPolicy kind_;
  std::string name_;
  bool has_plan_ = false;
  Plan plan_;
  int64_t world_size_, num_experts_ = -1;
};

// InvalidArgument on a bad cluster or layer spec.
absl::StatusOr<std::unique_ptr<Policy>> MakePolicy(PlacementPolicy policy, const ClusterSpec& cluster,
                                                   const LayerSpec& layer, const PolicyOptions& options);
// name: one of PolicyNames(); InvalidArgument otherwise (ParsePolicy's message).
absl::StatusOr<std::unique_ptr<Policy>> MakePolicy(const std::string& name, const ClusterSpec& cluster,
                                                   const LayerSpec& layer, const PolicyOptions& options);

}  // namespace dynamoe::placement
