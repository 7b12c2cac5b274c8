// Differentiable pieces of the MoE step, as C++ autograd functions.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "kernels/kernels.h"

namespace dynamoe::scheduler {

// rows[p] = x[token of the assignment at row p]; rows sorted by expert.
// Backward sums each token's kept rows in choice order (deterministic).
at::Tensor Dispatch(const at::Tensor& x, const at::Tensor& position, int64_t num_rows);

// out[t] = sum_j weight[t, j] * rows[position[t, j]] over kept choices.
at::Tensor Combine(const at::Tensor& rows, const at::Tensor& weight, const at::Tensor& position);

struct ExpertParams {
  at::Tensor w1, w2, w3, b1, b2;  // w3, b1, b2 may be undefined
  kernels::Activation activation = kernels::Activation::kGelu;
};

// Per-expert FFN over expert-sorted rows (kept_counts rows per expert):
// y_e = act(x_e w1[e] + b1[e]) [* (x_e w3[e])] w2[e] + b2[e].
// Saves the pre-activations and recomputes the activation in backward.
at::Tensor ExpertFFN(const at::Tensor& rows, const at::Tensor& kept_counts, const ExpertParams& params);

}  // namespace dynamoe::scheduler
