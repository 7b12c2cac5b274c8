// One MoE step on one process: gate -> counts -> dispatch -> experts ->
// combine, with per-phase timings. The C++ module and the torch ops both call
// this, so C++ and Python have one implementation.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>

#include "monitor/phases.h"
#include "scheduler/functions.h"
#include "scheduler/options.h"
#include "scheduler/router.h"

namespace dynamoe::scheduler {

// A user-provided expert: rows of one expert in, same-shaped rows out.
using CustomExpertFn = std::function<at::Tensor(int64_t expert_idx, const at::Tensor& rows)>;

struct StepInputs {
  at::Tensor x;            // [..., d_model]
  at::Tensor gate_weight;  // [E, d_model]
  at::Tensor expert_bias;  // [E] or undefined
  ExpertParams experts;    // used when custom_expert is empty
  CustomExpertFn custom_expert;
  bool training = false;
  int64_t step = 0;  // seeds use_rts
};

struct StepResult {
  at::Tensor y;              // same shape as x
  at::Tensor aux_loss;       // weighted sum of the auxiliary losses, in the graph
  at::Tensor balance_loss;   // unweighted, in the graph
  at::Tensor z_loss;         // unweighted, in the graph
  at::Tensor counts;         // [world=1, E] int64 rows each expert computed
  at::Tensor routed_counts;  // [E] int64 assignments before capacity
  int64_t dropped = 0;
  int64_t capacity = -1;
  monitor::PhaseTimes times;
};

// Checks shapes, dtypes and devices of the inputs against the options;
// InvalidArgument names the layer, what was expected and what came.
absl::Status ValidateInputs(const MoEOptions& options, const StepInputs& in);

StepResult MoEForward(const MoEOptions& options, const StepInputs& in);

// The router's view of the layer options for one step.
RouterOptions MakeRouterOptions(const MoEOptions& options, bool training, int64_t step);

// DeepSeek-V3 auxiliary-loss-free update: bias[e] += rate * sign(mean - load[e]).
void UpdateExpertBias(at::Tensor& expert_bias, const at::Tensor& counts, double rate);

}  // namespace dynamoe::scheduler
