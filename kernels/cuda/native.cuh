// Device-side element types and vector access shared by the CUDA kernels:
// kernels::bf16 / f16 map to the CUDA types, math runs in Acc<T>.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/dtype.h"

namespace dynamoe::kernels::cuda {

template <typename T> struct Native { using type = T; };
template <> struct Native<bf16> { using type = __nv_bfloat16; };
template <> struct Native<f16> { using type = __half; };

__device__ inline float Load(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float Load(__half v) { return __half2float(v); }
__device__ inline float Load(float v) { return v; }
__device__ inline double Load(double v) { return v; }

// Accumulator to element: Make<T>(acc) with acc float, or double for double.
__device__ inline __nv_bfloat16 ToNative(float v, __nv_bfloat16*) { return __float2bfloat16(v); }
__device__ inline __half ToNative(float v, __half*) { return __float2half(v); }
__device__ inline float ToNative(float v, float*) { return v; }
__device__ inline double ToNative(double v, double*) { return v; }
template <typename T, typename A>
__device__ inline T Make(A v) { return ToNative(v, static_cast<T*>(nullptr)); }

// N elements in one access (16 bytes when N = 16 / sizeof(T)).
template <typename T, int N>
struct alignas(sizeof(T) * N) VecOf {
  T v[N];
};
template <typename T>
using Vec = VecOf<T, 16 / sizeof(T)>;
template <typename T, int N>
__device__ inline VecOf<T, N> LoadVec(const T* p) { return *reinterpret_cast<const VecOf<T, N>*>(p); }
template <typename T, int N>
__device__ inline void StoreVec(T* p, const VecOf<T, N>& v) { *reinterpret_cast<VecOf<T, N>*>(p) = v; }

// True when every non-null pointer is 16-byte aligned.
inline bool Aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// One kernel instantiation per vector width: calls launch(width) with width a
// std::integral_constant of 16 / sizeof(T) when `vectorised`, else of 1.
template <typename T, typename F>
inline void WithVecWidth(bool vectorised, F&& launch) {
  if (vectorised)
    launch(std::integral_constant<int, 16 / sizeof(T)>{});
  else
    launch(std::integral_constant<int, 1>{});
}

}  // namespace dynamoe::kernels::cuda
