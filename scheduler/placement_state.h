// A layer's placement policy and the plan in force. One per MoE layer: the
// C++ module owns one, Python holds one as torch.classes.dynamoe.Placement.
// The policy is made on the first step (when the group size and dtype are
// known) from DYNAMOE_PLACEMENT and the cost-model variables, and re-made if
// the layer's shape or dtype changes.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/custom_class.h>

#include <memory>
#include <string>

#include "placement/policy.h"
#include "scheduler/options.h"

namespace dynamoe::scheduler {

class PlacementState : public torch::CustomClassHolder {
 public:
  // policy: "" reads DYNAMOE_PLACEMENT; else none, fastermoe, adaptive, eplb.
  explicit PlacementState(std::string policy = "");

  // Feeds this step's kept count matrix [P, E] and returns the plan in force.
  // Throws dynamoe::Error on a bad policy name or count shape.
  const placement::Plan& Next(const MoEOptions& options, const at::Tensor& kept_matrix, int64_t bytes_per_element);
  // Plain expert parallelism for this step (custom experts cannot be copied).
  const placement::Plan& UseNone(const MoEOptions& options, const at::Tensor& kept_matrix,
                                 int64_t bytes_per_element);

  const std::string& policy_name() const { return name_; }
  const placement::Plan& plan() const { return plan_; }

 private:
  void Ensure(const MoEOptions& options, int64_t world_size, int64_t bytes_per_element);
  std::string name_;
  std::unique_ptr<placement::Policy> policy_;
  std::string key_;  // the layer spec the policy was made for
  placement::Plan plan_;
};

}  // namespace dynamoe::scheduler
