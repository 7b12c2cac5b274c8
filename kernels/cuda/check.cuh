// CUDA error checks shared by the launchers: every launch is checked.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#define DYNAMOE_CUDA_RETURN_IF_ERROR(expr)                                             \
  do {                                                                                 \
    cudaError_t dynamoe_err_ = (expr);                                                 \
    if (dynamoe_err_ != cudaSuccess)                                                   \
      return ::absl::InternalError(::absl::StrCat(#expr, " failed: ",                  \
                                                  cudaGetErrorString(dynamoe_err_)));  \
  } while (0)

#define DYNAMOE_CUDA_CHECK_LAUNCH() DYNAMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError())

namespace dynamoe::kernels::cuda {
inline unsigned BlocksFor(int64_t n, unsigned threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);
}
}  // namespace dynamoe::kernels::cuda
