// Shared by the multi-process test workers: ulp checks counted like Expect,
// and the dtype argument.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>

#include <string>

#include "tests/cpp/ulps.h"
#include "tests/cpp/worker_expect.h"

namespace dynamoe::testing {

// a within max_ulps of b (tests/cpp/ulps.h); 0 is bitwise equality.
inline void ExpectUlps(const torch::Tensor& a, const torch::Tensor& b, double max_ulps, const std::string& what) {
  const std::string why = WithinUlps(a, b, max_ulps, what);
  Expect(why.empty(), what + " (" + why + ")");
}

// torch 2.x's fp32 GEMM (unlike Debian torch 1.13's OpenBLAS) sums a row's
// products in an order that depends on the batch it multiplies, and an
// expert's batch differs between ranks and one process: measured up to 1 ulp
// in outputs, 4.5 in the router's gradient and 4 in expert gradients (worlds
// 2-4, every policy), so every fp32 bound is at least 6 there.
inline double Fp32Floor(torch::Dtype dtype) { return dtype == torch::kFloat && TORCH_VERSION_MAJOR >= 2 ? 6 : 0; }

// Ulps allowed between a result and one process's when the same products
// go through a GEMM over a batch of another size (an expert's rows on
// another rank, or with another rank's rows). Debian torch 1.13's fp32 and
// bf16 GEMM sums each row in the same order whatever the batch: bitwise
// (measured 0). Its fp64 GEMM does not: measured up to 2.75, bound 4.
inline double BatchSizeUlps(torch::Dtype dtype) { return dtype == torch::kDouble ? 4 : Fp32Floor(dtype); }

// The worker's dtype=<float|bfloat16|double> argument.
inline torch::Dtype DtypeOf(const std::string& name) {
  if (name == "float") return torch::kFloat;
  if (name == "bfloat16") return torch::kBFloat16;
  return torch::kDouble;
}

}  // namespace dynamoe::testing
