// Comparing a result with its reference in ulps: the gap is measured in units
// of the spacing of the reference's dtype at the reference's largest
// magnitude (2^floor(log2 max|b|) * eps, eps = 2^-7 bf16, 2^-23 fp32,
// 2^-52 fp64). Identical arithmetic is compared with 0 ulps (bitwise equal);
// a different reduction order with a few.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

namespace dynamoe::testing {

inline double Epsilon(torch::ScalarType t) {
  if (t == torch::kBFloat16) return std::ldexp(1.0, -7);
  if (t == torch::kHalf) return std::ldexp(1.0, -10);
  if (t == torch::kFloat) return std::numeric_limits<float>::epsilon();
  return std::numeric_limits<double>::epsilon();
}

// One ulp of dtype at `magnitude` (> 0).
inline double UlpAt(torch::ScalarType dtype, double magnitude) {
  return std::ldexp(Epsilon(dtype), std::ilogb(magnitude));
}

struct Gap {
  bool same_shape = false;
  double max_diff = 0;  // max |a - b|
  double ulp = 0;       // one ulp at max |b| (0 when b is all zero)
  double ulps = 0;      // max_diff / ulp (infinite when b is zero and a is not)
};

inline Gap Measure(const torch::Tensor& a, const torch::Tensor& b) {
  Gap g;
  g.same_shape = a.sizes() == b.sizes();
  if (!g.same_shape || a.numel() == 0) return g;
  const torch::Tensor a64 = a.detach().to(torch::kDouble), b64 = b.detach().to(torch::kDouble);
  g.max_diff = (a64 - b64).abs().max().item<double>();
  const double scale = b64.abs().max().item<double>();
  g.ulp = scale > 0 ? UlpAt(b.scalar_type(), scale) : 0;
  g.ulps = g.max_diff == 0 ? 0 : g.ulp > 0 ? g.max_diff / g.ulp : std::numeric_limits<double>::infinity();
  return g;
}

// "" when a is within max_ulps of b (0: bitwise equal), else why not. With
// DYNAMOE_TEST_ULPS_LOG=<file>, appends every measured gap to that file (the
// figures behind the bounds).
inline std::string WithinUlps(const torch::Tensor& a, const torch::Tensor& b, double max_ulps,
                              const std::string& what = "") {
  const Gap g = Measure(a, b);
  if (const char* log = std::getenv("DYNAMOE_TEST_ULPS_LOG"))
    std::ofstream(log, std::ios::app) << g.ulps << " ulps (bound " << max_ulps << ") "
                                      << torch::toString(b.scalar_type()) << " " << what << "\n";
  if (!g.same_shape) return "shapes differ";
  if (g.ulps <= max_ulps && !(max_ulps == 0 && !torch::equal(a, b))) return "";
  std::ostringstream why;
  why << "max diff " << g.max_diff << " = " << g.ulps << " ulps of " << g.ulp << ", allowed " << max_ulps;
  return why.str();
}

}  // namespace dynamoe::testing
