// A layer's placement policy and the plan in force. One per MoE layer: the
// C++ module owns one, Python holds one as torch.classes.dynamoe.Placement.
// The policy is made on the first step (when the group size and dtype are
// known) from DYNAMOE_PLACEMENT and the cost-model variables, and re-made if
// the layer's shape or dtype changes.
//
// DYNAMOE_CALIBRATE=online: each forward's phase times travel with the next
// step's count all-gather (Figures, Calibrate), so every rank fits the same
// all-gathered figures against the same counts and plan (placement/
// online_fit.h) and sets the same rates on its policy: plans stay identical.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/custom_class.h>

#include <memory>
#include <optional>
#include <string>

#include "monitor/phases.h"
#include "monitor/step_stats.h"
#include "placement/online_fit.h"
#include "placement/policy.h"
#include "scheduler/options.h"

namespace dynamoe::scheduler {

class PlacementState : public torch::CustomClassHolder {
 public:
  // policy: "" reads DYNAMOE_PLACEMENT; else one of placement::PolicyNames()
  // (throws dynamoe::Error naming them otherwise).
  explicit PlacementState(std::string policy = "");

  // Feeds this step's kept count matrix [P, E] and returns the plan in force.
  // Throws dynamoe::Error on a bad policy name or count shape.
  const placement::Plan& Next(const MoEOptions& options, const at::Tensor& kept_matrix, int64_t bytes_per_element);
  // Plain expert parallelism for this step (custom experts cannot be copied).
  const placement::Plan& UseNone(const MoEOptions& options, const at::Tensor& kept_matrix,
                                 int64_t bytes_per_element);

  placement::PlacementPolicy policy_kind() const { return kind_; }
  const std::string& policy_name() const { return name_; }
  const placement::Plan& plan() const { return plan_; }

  // Values per rank in the calibration figures: a valid flag, then the phase seconds.
  static constexpr int64_t kFigures = 1 + monitor::kNumPhases;
  // This rank's figures of its last forward for the count all-gather; empty
  // when DYNAMOE_CALIBRATE is off (the payload stays as it was).
  std::vector<double> Figures() const;
  // Every rank's figures [world * kFigures], rank-major: fits them with the
  // previous forward's counts and plan (when every rank had one), and gives
  // the policy the fitted rates once the fit is ready.
  void Calibrate(const std::vector<double>& all, int64_t world_size);
  // This forward's phase times (not a recomputation's), for the next Figures().
  void Measured(const monitor::PhaseTimes& times);
  bool calibrating() const { return fit_ != nullptr; }
  // For stats() and the metrics: the rates the policy uses (the configured
  // ones until the fit is ready, or without calibration); nullopt before the
  // first step.
  std::optional<monitor::CostModelStats> CostModel() const;

 private:
  void Ensure(const MoEOptions& options, int64_t world_size, int64_t bytes_per_element);
  placement::PlacementPolicy kind_;
  std::string name_;
  std::unique_ptr<placement::Policy> policy_;
  std::string key_;  // the layer spec the policy was made for
  placement::Plan plan_;
  placement::CountMatrix counts_;  // this step's (for Measured)
  std::unique_ptr<placement::OnlineFit> fit_;  // DYNAMOE_CALIBRATE=online
  // The last forward's counts, plan and phase seconds, until the next step fits them.
  struct Pending {
    placement::CountMatrix counts;
    placement::Plan plan;
    monitor::PhaseTimes times;
  };
  std::unique_ptr<Pending> pending_;
};

}  // namespace dynamoe::scheduler
