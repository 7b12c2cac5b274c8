// Shared by the multi-process test workers: ulp checks counted like Expect,
// and the dtype argument.
#pragma once

#include <torch/torch.h>

#include <string>

#include "tests/cpp/ulps.h"
#include "tests/cpp/worker_expect.h"

namespace dynamoe::testing {

// a within max_ulps of b (tests/cpp/ulps.h); 0 is bitwise equality.
inline void ExpectUlps(const torch::Tensor& a, const torch::Tensor& b, double max_ulps, const std::string& what) {
  const std::string why = WithinUlps(a, b, max_ulps, what);
  Expect(why.empty(), what + " (" + why + ")");
}

// The worker's dtype=<float|bfloat16|double> argument.
inline torch::Dtype DtypeOf(const std::string& name) {
  if (name == "float") return torch::kFloat;
  if (name == "bfloat16") return torch::kBFloat16;
  return torch::kDouble;
}

}  // namespace dynamoe::testing
