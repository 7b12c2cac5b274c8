// Row gather and deterministic weighted combine on the GPU: one block per row,
// each output element written once (no floating-point atomics).
#include <cuda_bf16.h>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/kernels_cuda.h"

namespace dynamoe::kernels::cuda {
namespace {

template <typename T> struct Native { using type = T; };
template <> struct Native<bf16> { using type = __nv_bfloat16; };

__device__ inline float Load(const __nv_bfloat16& v) { return __bfloat162float(v); }
__device__ inline float Load(const float& v) { return v; }
__device__ inline double Load(const double& v) { return v; }
__device__ inline void Put(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ inline void Put(float* p, float v) { *p = v; }
__device__ inline void Put(double* p, double v) { *p = v; }

}  // namespace

template <typename T>
__global__ void GatherRowsKernel(const T* src, const int64_t* row_index, int64_t d, T* dst) {
  const int64_t row = blockIdx.x;
  const T* s = src + row_index[row] * d;
  T* o = dst + row * d;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) o[c] = s[c];
}

template <typename T>
absl::Status GatherRows(const T* src, const int64_t* row_index, int64_t num_rows, int64_t d,
                        T* dst, cudaStream_t stream) {
  if (num_rows == 0 || d == 0) return absl::OkStatus();
  if (num_rows > 2147483647) return absl::InvalidArgumentError("num_rows exceeds the grid limit");
  using N = typename Native<T>::type;
  GatherRowsKernel<N><<<static_cast<unsigned>(num_rows), 128, 0, stream>>>(
      reinterpret_cast<const N*>(src), row_index, d, reinterpret_cast<N*>(dst));
  DYNAMOE_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

template <typename T, typename W, typename A>
__global__ void CombineRowsKernel(const T* rows, const int64_t* position, const W* weight,
                                  int top_k, int64_t d, T* out) {
  const int64_t t = blockIdx.x;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    A acc = 0;
    for (int j = 0; j < top_k; ++j) {  // choice order: same sum as the CPU twin
      const int64_t p = position[t * top_k + j];
      if (p < 0) continue;
      const A w = weight ? static_cast<A>(weight[t * top_k + j]) : A(1);
      acc += w * static_cast<A>(Load(rows[p * d + c]));
    }
    Put(out + t * d + c, acc);
  }
}

template <typename T, typename W>
absl::Status CombineRows(const T* rows, const int64_t* position, const W* weight, int top_k,
                         int64_t num_tokens, int64_t d, T* out, cudaStream_t stream) {
  if (num_tokens == 0 || d == 0) return absl::OkStatus();
  if (num_tokens > 2147483647) return absl::InvalidArgumentError("num_tokens exceeds the grid limit");
  using N = typename Native<T>::type;
  using A = typename Acc<T>::type;
  CombineRowsKernel<N, W, A><<<static_cast<unsigned>(num_tokens), 128, 0, stream>>>(
      reinterpret_cast<const N*>(rows), position, weight, top_k, d, reinterpret_cast<N*>(out));
  DYNAMOE_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

template absl::Status GatherRows<float>(const float*, const int64_t*, int64_t, int64_t, float*, cudaStream_t);
template absl::Status GatherRows<double>(const double*, const int64_t*, int64_t, int64_t, double*, cudaStream_t);
template absl::Status GatherRows<bf16>(const bf16*, const int64_t*, int64_t, int64_t, bf16*, cudaStream_t);
template absl::Status CombineRows<float, float>(const float*, const int64_t*, const float*, int, int64_t, int64_t, float*, cudaStream_t);
template absl::Status CombineRows<double, double>(const double*, const int64_t*, const double*, int, int64_t, int64_t, double*, cudaStream_t);
template absl::Status CombineRows<bf16, float>(const bf16*, const int64_t*, const float*, int, int64_t, int64_t, bf16*, cudaStream_t);

}  // namespace dynamoe::kernels::cuda
