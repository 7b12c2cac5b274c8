// The layer's CUDA path: torch tensors in, the kernels of kernels/cuda/ on
// torch's current stream. Built only against a torch with CUDA
// (DYNAMOE_TORCH_CUDA); the Debian CPU build never compiles it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/kernels.h"
#include "scheduler/routing.h"

namespace dynamoe::scheduler::cuda_path {

// Router on the GPU: logits by cuBLAS, then the fused router kernel. Counts
// come back to the host in one copy (the step sizes its buffers from them).
absl::StatusOr<Routing> Route(const at::Tensor& x, const at::Tensor& gate_weight, const at::Tensor& gate_bias,
                              const at::Tensor& expert_bias,
                              const RouterOptions& options);

// assignment[row] = t * k + j for each kept position (inverse of position).
at::Tensor Assignments(const at::Tensor& position, int64_t num_rows);
// rows[p] = x[assignment[p] / k].
at::Tensor GatherRows(const at::Tensor& x, const at::Tensor& assignment, int64_t top_k);
// out[t] = sum_j weight[t, j] rows[position[t, j]]; weight may be undefined (1).
at::Tensor CombineRows(const at::Tensor& rows, const at::Tensor& weight, const at::Tensor& position);
// grad_rows[p] = weight[a] grad_out[a / k], a = assignment[p].
at::Tensor ScatterWeightedRows(const at::Tensor& grad_out, const at::Tensor& assignment, const at::Tensor& weight,
                               int64_t top_k);
// grad_weight[t, j] = <grad_out[t], rows[position[t, j]]> (0 where dropped).
at::Tensor CombineWeightGrad(const at::Tensor& grad_out, const at::Tensor& rows, const at::Tensor& position,
                             at::ScalarType weight_dtype);

// Grouped expert GEMMs over host row counts (kernels/cuda/grouped_gemm.h):
// Forward  out[rows, n] = a[rows, k] . b[g]           b: [G, k, n]
// DataGrad out[rows, k] = a[rows, n] . b[g]^T         b: [G, k, n]
// WeightGrad out[g] += a[rows_g, k]^T . b[rows_g, n]  out: [G, k, n], may be wider
at::Tensor GroupedForward(const at::Tensor& a, const at::Tensor& b, const int64_t* counts);
at::Tensor GroupedDataGrad(const at::Tensor& a, const at::Tensor& b, const int64_t* counts);
// overwrite: out[g] = ... (beta 0; experts without rows get zeros) instead of +=.
void GroupedWeightGrad(const at::Tensor& a, const at::Tensor& b, const int64_t* counts, at::Tensor& out,
                       bool overwrite);

// a = act(h) [* g] in one pass (g may be undefined).
at::Tensor ActivationForward(const at::Tensor& h, const at::Tensor& g, kernels::Activation activation);
// One pass back through a = act(h) [* g]: grad_h (written over grad_a's
// memory), grad_g (undefined without g) and a itself for the w2 gradient.
struct ActivationGrads {
  at::Tensor grad_h, grad_g, a;
};
ActivationGrads ActivationBackward(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& g,
                                   kernels::Activation activation);

}  // namespace dynamoe::scheduler::cuda_path
