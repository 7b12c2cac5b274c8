// The per-expert FFN over slot-sorted rows as plain functions (no autograd
// inside). The autograd ExpertFFN runs them once per step; the overlapped
// pipeline once per chunk, accumulating the weight gradients.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "config/settings.h"
#include "scheduler/functions.h"

namespace dynamoe::scheduler {

// What backward needs besides the inputs: the pre-activations x w1 + b1 and,
// when gated, x w3 (the activation itself is recomputed).
struct FFNActivations {
  at::Tensor h, g;
};

// Gradients of the parameters, summed over calls; undefined where the
// parameter is absent.
struct FFNGrads {
  at::Tensor w1, w2, w3, b1, b2;
  // The next FFNBackward overwrites w1..w3 instead of adding (CUDA: no zero
  // fill, GEMM beta 0); cleared by that call.
  bool fresh = false;
};

// The CUDA path's expert GEMMs (DYNAMOE_GROUPED_GEMM): the setting, unless
// SetGemmAlgorithm chose another for the process (a benchmark comparing both
// side by side in one run; op dynamoe::set_gemm_algorithm). CPU ignores it.
// The override holds until cleared (nullopt: the setting's again); change it
// between steps, not between a forward and its backward.
runtime::GemmAlgorithm GemmAlgorithmInUse();
void SetGemmAlgorithm(std::optional<runtime::GemmAlgorithm> algorithm);

// A parameter is present when defined and non-empty (torch 1.13's custom
// functions carry absent ones as empty tensors).
bool Present(const at::Tensor& t);

// counts[k] rows of slot k, for every slot of params (w1.size(0) of them).
at::Tensor FFNForward(const at::Tensor& rows, const int64_t* counts, const ExpertParams& params,
                      FFNActivations* saved);

// Zeros shaped like the present parameters. wide: 16-bit parameters get
// float32 sums, so gradients summed over many chunks round once (Narrow).
// fresh: for a single FFNBackward call; on CUDA the weight sums stay
// undefined and that call allocates and writes each just before its GEMM.
FFNGrads ZeroGrads(const ExpertParams& params, bool wide = false, bool fresh = false);
// The sums in the parameters' dtype.
FFNGrads Narrow(FFNGrads grads, const ExpertParams& params);

// Adds this call's parameter gradients into `grads`; returns d loss / d rows.
at::Tensor FFNBackward(const at::Tensor& grad_y, const at::Tensor& rows, const int64_t* counts,
                       const ExpertParams& params, const FFNActivations& saved, FFNGrads& grads);

}  // namespace dynamoe::scheduler
