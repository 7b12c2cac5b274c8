// Activation math shared by the CPU twin and the CUDA kernels (host and
// device): value and derivative, in the accumulator type.
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define DYNAMOE_HD __host__ __device__
#else
#define DYNAMOE_HD
#endif

namespace dynamoe::kernels {

template <typename A>
DYNAMOE_HD inline A ActValue(int act, A x) {  // act: static_cast<int>(Activation)
  if (act == 1) return x > A(0) ? x : A(0);
  if (act == 2) return x / (A(1) + exp(-x));
  // Phi(x) = erfc(-x / sqrt 2) / 2: no cancellation for large negative x,
  // unlike 1 + erf(x / sqrt 2).
  return A(0.5) * x * erfc(-x * A(0.7071067811865476));
}

template <typename A>
DYNAMOE_HD inline A ActDerivative(int act, A x) {
  if (act == 1) return x > A(0) ? A(1) : A(0);
  if (act == 2) {
    const A s = A(1) / (A(1) + exp(-x));
    return s * (A(1) + x * (A(1) - s));
  }
  const A cdf = A(0.5) * erfc(-x * A(0.7071067811865476));
  const A pdf = exp(A(-0.5) * x * x) * A(0.3989422804014327);
  return cdf + x * pdf;
}

}  // namespace dynamoe::kernels
