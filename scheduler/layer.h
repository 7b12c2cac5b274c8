// One MoE layer's runtime, built once: its options (validated once), its
// state across steps (step counter, placement, recomputation records), its
// expert-parallel group and its schedule. Each call passes only the layer's
// tensors. dynamoe::MoELayer (C++) and dynamoe.MoE (Python, through
// torch.classes.dynamoe.Layer) are parameter holders around it, so both run
// one step: route -> plan -> dispatch -> experts -> combine (moe_step.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/custom_class.h>

#include <optional>
#include <string>
#include <vector>

#include "runtime/communicator.h"
#include "scheduler/layer_state.h"
#include "scheduler/moe_step.h"
#include "scheduler/options.h"
#include "scheduler/schedule.h"

namespace dynamoe::scheduler {

// DeepSpeed's residual MoE (use_residual): a dense MLP mixed into the
// output by a learned 2-way softmax. Each pair is an nn.Linear's.
struct ResidualParams {
  at::Tensor fc1_weight, fc1_bias;    // [d_hidden, d_model], [d_hidden]
  at::Tensor fc2_weight, fc2_bias;    // [d_model, d_hidden], [d_model]
  at::Tensor coef_weight, coef_bias;  // [2, d_model], [2]
};

// A layer's parameters and buffers, as one call passes them.
struct LayerTensors {
  at::Tensor gate_weight;  // [E, d_model]
  at::Tensor gate_bias;    // [E] with router_bias, else undefined
  at::Tensor expert_bias;  // [E] buffer; a training step updates it in place (bias_update_rate)
  ExpertParams experts;    // this rank's built-in experts (the activation is the layer's); unused with custom experts
  ResidualParams residual;  // use_residual only
};

class Layer : public torch::CustomClassHolder {
 public:
  // Throws InvalidArgument naming the first bad option, or a group size that
  // does not divide num_experts. An unnamed layer takes NextDefaultLayerName().
  // state null: a fresh one with DYNAMOE_PLACEMENT's policy. custom_experts:
  // the experts are the caller's modules (Forward's callback or Dispatch).
  Layer(MoEOptions options, runtime::CommunicatorPtr comm = {}, c10::intrusive_ptr<LayerState> state = {},
        bool custom_experts = false);

  const MoEOptions& options() const { return options_.get(); }
  const runtime::CommunicatorPtr& comm() const { return comm_; }
  const c10::intrusive_ptr<LayerState>& state() const { return state_; }
  bool custom_experts() const { return custom_experts_; }
  kernels::Activation activation() const { return activation_; }  // options().activation(), parsed once
  int64_t num_local_experts() const;
  int64_t first_expert() const;  // global index of local expert 0

  // Overrides DYNAMOE_SCHEDULE / DYNAMOE_GROUP_SIZE / DYNAMOE_OVERLAP_DEGREE;
  // "" and nullopt keep the environment's. Throws naming the layer on a bad
  // kind, group_size < 1 or overlap_degree outside [0, 64].
  void set_schedule(const std::string& kind, std::optional<int64_t> group_size,
                    std::optional<int64_t> overlap_degree);
  ScheduleOptions schedule() const;  // in force: the layer's own, else the settings'
  bool has_own_schedule() const { return schedule_.has_value(); }
  // Overrides DYNAMOE_PLACEMENT: none, fastermoe, adaptive, eplb (a fresh policy).
  void set_placement(const std::string& policy);

  // One step; y has the residual mixed in. With custom experts, custom_expert
  // runs each local expert (global index, its rows).
  StepResult Forward(const at::Tensor& x, const LayerTensors& t, bool training,
                     const CustomExpertFn& custom_expert = {}) const;
  // Custom experts that the caller runs itself: the step up to the experts;
  // Finish takes one output per local expert with rows (PendingStep).
  c10::intrusive_ptr<PendingStep> Dispatch(const at::Tensor& x, const LayerTensors& t, bool training) const;
  StepResult Finish(PendingStep& pending, const std::vector<at::Tensor>& outputs,
                    const ResidualParams& residual) const;

 private:
  StepInputs Inputs(const at::Tensor& x, const LayerTensors& t, bool training) const;
  void CheckResidual(const ResidualParams& r) const;  // use_residual: the six tensors, shaped
  at::Tensor Residual(const at::Tensor& x, const at::Tensor& y, const ResidualParams& r) const;

  ValidatedOptions options_;  // checked once, here, not each step
  runtime::CommunicatorPtr comm_;
  c10::intrusive_ptr<LayerState> state_;
  bool custom_experts_ = false;
  kernels::Activation activation_ = kernels::Activation::kGelu;
  std::optional<ScheduleOptions> schedule_;  // unset: the settings', read each step
};

}  // namespace dynamoe::scheduler
