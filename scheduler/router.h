// The router: logits, softmax in fp32 (fp64 for fp64 input), top-k, weights,
// capacity and positions, and the auxiliary losses.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "absl/status/statusor.h"
#include "scheduler/routing.h"

namespace dynamoe::scheduler {

// x: [T, d_model]; gate_weight: [E, d_model]; gate_bias: [E] or undefined
// (added to the logits); expert_bias: [E] (selection only).
absl::StatusOr<Routing> Route(const at::Tensor& x, const at::Tensor& gate_weight, const at::Tensor& gate_bias,
                              const at::Tensor& expert_bias, const RouterOptions& options);


}  // namespace dynamoe::scheduler
