// What one MoE layer keeps from step to step: its training-step counter, its
// placement policy, and, for each recent training forward, what a
// recomputation of that forward needs to route exactly as it did.
//
// Activation checkpointing (torch.utils.checkpoint, reentrant or not) runs a
// layer's forward again during backward. A recomputation must use the step
// (RTS priorities), the expert bias and the placement plan of the forward it
// repeats, and must not repeat that step's side effects: the step counter,
// the expert-bias update, metrics and the trace. A forward is a
// recomputation when it runs inside a backward pass and draws the same id
// from torch's CPU generator as an earlier training forward of this layer:
// checkpointing restores that generator (preserve_rng_state, its default)
// before it recomputes. One C++ object serves dynamoe::MoELayer and
// dynamoe.MoE (torch.classes.dynamoe.LayerState).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/custom_class.h>

#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "placement/plan.h"
#include "scheduler/placement_state.h"

namespace dynamoe::scheduler {

// One training forward, as a recomputation replays it.
struct ForwardRecord {
  uint64_t id = 0;
  int64_t step = 0;
  at::Tensor expert_bias;    // the bias it routed with (kept when the step then changed it)
  at::Tensor kept_matrix;    // [ep_size, E] int64, as gathered
  at::Tensor routed_matrix;  // [ep_size, E] int64
  placement::Plan plan;
};

class LayerState : public torch::CustomClassHolder {
 public:
  // policy: "" reads DYNAMOE_PLACEMENT; else none, fastermoe, adaptive, eplb.
  explicit LayerState(const std::string& policy = "");

  // Recent training forwards kept for recomputation, per layer. Checkpointed
  // forwards wait for their backward; more than this many in flight (deep
  // pipeline schedules) is an error naming the limit, never a wrong route.
  static constexpr size_t kMaxRecords = 256;

  struct Begun {
    uint64_t id = 0;                                // 0 outside training
    std::shared_ptr<const ForwardRecord> original;  // set when this forward recomputes it
  };
  // The start of a forward. In training it draws the forward's id; a forward
  // inside a backward pass whose id is known is a recomputation.
  // FailedPrecondition for a training forward inside a backward pass whose
  // id is unknown: the generator was not restored (preserve_rng_state=False)
  // or its record is gone (more than kMaxRecords forwards in flight).
  absl::StatusOr<Begun> Begin(bool training, const std::string& layer);
  // After a fresh training forward, its side effects, once: keeps its
  // record (with the bias it routed with when bias_update_rate > 0), advances
  // the step and applies the expert-bias update from the group's routed
  // counts (routed_matrix [ep_size, E]) in place.
  void Commit(uint64_t id, int64_t step, at::Tensor expert_bias, double bias_update_rate,
              const at::Tensor& kept_matrix, const at::Tensor& routed_matrix, const placement::Plan& plan);

  int64_t step() const;
  void set_step(int64_t step);
  PlacementState& placement() { return *placement_; }
  const PlacementState& placement() const { return *placement_; }
  void set_placement(const std::string& policy);

 private:
  mutable std::mutex mu_;
  int64_t step_ = 0;
  std::deque<std::shared_ptr<const ForwardRecord>> records_;
  c10::intrusive_ptr<PlacementState> placement_;
};

// "moe0", "moe1", ...: a process's unnamed layers in creation order, so
// every rank that builds the same model names them alike.
std::string NextDefaultLayerName();

// True while the autograd engine runs a backward pass on this thread (a
// forward called from there is a recomputation).
bool InBackwardPass();

// DeepSeek-V3 auxiliary-loss-free update: bias[e] += rate * sign(mean - load[e]),
// with load the counts summed over their leading rows.
void UpdateExpertBias(at::Tensor& expert_bias, const at::Tensor& counts, double rate);

}  // namespace dynamoe::scheduler
