// Row permutation and the deterministic weighted combine on the GPU. Rows move
// in 16-byte vectors when the row width and pointers allow it; each output
// element is written once and sums run in choice order (no atomics).
#include "common/status.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/kernels_cuda.h"
#include "kernels/cuda/native.cuh"

namespace dynamoe::kernels::cuda {
namespace {

// Elements per access: 16 bytes when every row start is 16-byte aligned.
template <typename T>
int VecWidth(int64_t d, std::initializer_list<const void*> ptrs) {
  return (d * sizeof(T)) % 16 == 0 && Aligned16(ptrs) ? 16 / sizeof(T) : 1;
}

unsigned ThreadsFor(int64_t units) {
  const int64_t t = ((units + 31) / 32) * 32;
  return static_cast<unsigned>(t < 32 ? 32 : (t > 256 ? 256 : t));
}

template <typename T, int N>
__global__ void GatherRowsKernel(const T* src, const int64_t* row_index, int64_t d, T* dst) {
  const int64_t row = blockIdx.x;
  using V = typename std::conditional<N == 1, T, Vec<T>>::type;
  const V* s = reinterpret_cast<const V*>(src + row_index[row] * d);
  V* o = reinterpret_cast<V*>(dst + row * d);
  for (int64_t c = threadIdx.x; c < d / N; c += blockDim.x) o[c] = s[c];
}

// out[t] = sum_j w[t, j] rows[position[t, j]] (w == nullptr: 1); accumulates in A.
// The token's positions and weights are read once into shared memory, so the
// row loads of all k choices can be in flight together.
template <typename T, typename W, typename A, int N>
__global__ void CombineRowsKernel(const T* rows, const int64_t* position, const W* weight, int top_k, int64_t d,
                                  T* out) {
  __shared__ int64_t pos[kMaxTopK];
  __shared__ A wt[kMaxTopK];
  const int64_t t = blockIdx.x;
  for (int j = threadIdx.x; j < top_k; j += blockDim.x) {
    pos[j] = position[t * top_k + j];
    wt[j] = weight ? static_cast<A>(weight[t * top_k + j]) : A(1);
  }
  __syncthreads();
  for (int64_t c = threadIdx.x * int64_t(N); c < d; c += int64_t(blockDim.x) * N) {
    A acc[N];
#pragma unroll
    for (int i = 0; i < N; ++i) acc[i] = 0;
#pragma unroll 4
    for (int j = 0; j < top_k; ++j) {  // choice order: same sum as the CPU twin
      const int64_t p = pos[j];
      if (p < 0) continue;
      const A w = wt[j];
      if constexpr (N == 1) {
        acc[0] += w * static_cast<A>(Load(rows[p * d + c]));
      } else {
        const Vec<T> r = *reinterpret_cast<const Vec<T>*>(rows + p * d + c);
#pragma unroll
        for (int i = 0; i < N; ++i) acc[i] += w * static_cast<A>(Load(r.v[i]));
      }
    }
    if constexpr (N == 1) {
      out[t * d + c] = Make<T>(acc[0]);
    } else {
      Vec<T> o;
#pragma unroll
      for (int i = 0; i < N; ++i) o.v[i] = Make<T>(acc[i]);
      *reinterpret_cast<Vec<T>*>(out + t * d + c) = o;
    }
  }
}

// grad_rows[row] = w[a] grad_out[a / k], a = assignment[row].
template <typename T, typename W, typename A, int N>
__global__ void ScatterWeightedRowsKernel(const T* grad_out, const int64_t* assignment, const W* weight, int top_k,
                                          int64_t d, T* grad_rows) {
  const int64_t row = blockIdx.x, a = assignment[row];
  const A w = weight ? static_cast<A>(weight[a]) : A(1);
  const T* g = grad_out + (a / top_k) * d;
  T* o = grad_rows + row * d;
  for (int64_t c = threadIdx.x * int64_t(N); c < d; c += int64_t(blockDim.x) * N) {
    if constexpr (N == 1) {
      o[c] = Make<T>(w * static_cast<A>(Load(g[c])));
    } else {
      const Vec<T> in = *reinterpret_cast<const Vec<T>*>(g + c);
      Vec<T> r;
#pragma unroll
      for (int i = 0; i < N; ++i) r.v[i] = Make<T>(w * static_cast<A>(Load(in.v[i])));
      *reinterpret_cast<Vec<T>*>(o + c) = r;
    }
  }
}

// grad_weight[t, j] = <grad_out[t], rows[position[t, j]]>: one warp per choice,
// a fixed-shape shuffle tree, so the sum is the same on every run.
template <typename T, typename W, typename A, int N>
__global__ void CombineWeightGradKernel(const T* grad_out, const T* rows, const int64_t* position, int top_k,
                                        int64_t d, W* grad_weight) {
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int j = threadIdx.x / 32; j < top_k; j += warps) {
    const int64_t p = position[t * top_k + j];
    A dot = 0;
    if (p >= 0) {
      const T* g = grad_out + t * d;
      const T* r = rows + p * d;
      for (int64_t c = lane * int64_t(N); c < d; c += 32 * int64_t(N)) {
        if constexpr (N == 1) {
          dot += static_cast<A>(Load(g[c])) * static_cast<A>(Load(r[c]));
        } else {
          const Vec<T> gv = *reinterpret_cast<const Vec<T>*>(g + c), rv = *reinterpret_cast<const Vec<T>*>(r + c);
#pragma unroll
          for (int i = 0; i < N; ++i) dot += static_cast<A>(Load(gv.v[i])) * static_cast<A>(Load(rv.v[i]));
        }
      }
    }
    for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (lane == 0) grad_weight[t * top_k + j] = static_cast<W>(dot);
  }
}

__global__ void InvertPositionsKernel(const int64_t* position, int64_t n, int64_t* assignment) {
  for (int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; a < n; a += int64_t(gridDim.x) * blockDim.x)
    if (position[a] >= 0) assignment[position[a]] = a;
}

absl::Status CheckGrid(int64_t n, const char* what) {
  if (n > 2147483647) return absl::InvalidArgumentError(absl::StrCat(what, " exceeds the grid limit: ", n));
  return absl::OkStatus();
}

}  // namespace

absl::Status InvertPositions(const int64_t* position, int64_t num_assignments, int64_t* assignment,
                             cudaStream_t stream) {
  if (num_assignments == 0) return absl::OkStatus();
  InvertPositionsKernel<<<BlocksFor(num_assignments, 256), 256, 0, stream>>>(position, num_assignments, assignment);
  DYNAMOE_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

template <typename T>
absl::Status GatherRows(const T* src, const int64_t* row_index, int64_t num_rows, int64_t d, T* dst,
                        cudaStream_t stream) {
  if (num_rows == 0 || d == 0) return absl::OkStatus();
  DYNAMOE_RETURN_IF_ERROR(CheckGrid(num_rows, "num_rows"));
  using N = typename Native<T>::type;
  const auto* s = reinterpret_cast<const N*>(src);
  auto* o = reinterpret_cast<N*>(dst);
  const int w = VecWidth<T>(d, {src, dst});
  const unsigned grid = static_cast<unsigned>(num_rows), threads = ThreadsFor(d / w);
  WithVecWidth<T>(w > 1, [&](auto v) {
    GatherRowsKernel<N, decltype(v)::value><<<grid, threads, 0, stream>>>(s, row_index, d, o);
  });
  DYNAMOE_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

template <typename T, typename W>
absl::Status CombineRows(const T* rows, const int64_t* position, const W* weight, int top_k, int64_t num_tokens,
                         int64_t d, T* out, cudaStream_t stream) {
  if (num_tokens == 0 || d == 0) return absl::OkStatus();
  DYNAMOE_RETURN_IF_ERROR(CheckGrid(num_tokens, "num_tokens"));
  using N = typename Native<T>::type;
  using A = typename Acc<T>::type;
  const auto* r = reinterpret_cast<const N*>(rows);
  auto* o = reinterpret_cast<N*>(out);
  const int w = VecWidth<T>(d, {rows, out});
  const unsigned grid = static_cast<unsigned>(num_tokens), threads = ThreadsFor(d / w);
  WithVecWidth<T>(w > 1, [&](auto v) {
    CombineRowsKernel<N, W, A, decltype(v)::value><<<grid, threads, 0, stream>>>(r, position, weight, top_k, d, o);
  });
  DYNAMOE_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

template <typename T, typename W>
absl::Status ScatterWeightedRows(const T* grad_out, const int64_t* assignment, const W* weight, int top_k,
                                 int64_t num_rows, int64_t d, T* grad_rows, cudaStream_t stream) {
  if (num_rows == 0 || d == 0) return absl::OkStatus();
  DYNAMOE_RETURN_IF_ERROR(CheckGrid(num_rows, "num_rows"));
  using N = typename Native<T>::type;
  using A = typename Acc<T>::type;
  const auto* g = reinterpret_cast<const N*>(grad_out);
  auto* o = reinterpret_cast<N*>(grad_rows);
  const int w = VecWidth<T>(d, {grad_out, grad_rows});
  const unsigned grid = static_cast<unsigned>(num_rows), threads = ThreadsFor(d / w);
  WithVecWidth<T>(w > 1, [&](auto v) {
    ScatterWeightedRowsKernel<N, W, A, decltype(v)::value>
        <<<grid, threads, 0, stream>>>(g, assignment, weight, top_k, d, o);
  });
  DYNAMOE_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

template <typename T, typename W>
absl::Status CombineWeightGrad(const T* grad_out, const T* rows, const int64_t* position, int top_k,
                               int64_t num_tokens, int64_t d, W* grad_weight, cudaStream_t stream) {
  if (num_tokens == 0) return absl::OkStatus();
  DYNAMOE_RETURN_IF_ERROR(CheckGrid(num_tokens, "num_tokens"));
  using N = typename Native<T>::type;
  using A = typename Acc<T>::type;
  const auto* g = reinterpret_cast<const N*>(grad_out);
  const auto* r = reinterpret_cast<const N*>(rows);
  const int w = VecWidth<T>(d, {grad_out, rows});
  const unsigned grid = static_cast<unsigned>(num_tokens), threads = 32 * static_cast<unsigned>(top_k < 8 ? top_k : 8);
  WithVecWidth<T>(w > 1, [&](auto v) {
    CombineWeightGradKernel<N, W, A, decltype(v)::value>
        <<<grid, threads, 0, stream>>>(g, r, position, top_k, d, grad_weight);
  });
  DYNAMOE_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

#define DYNAMOE_INSTANTIATE(T, W)                                                                                    \
  template absl::Status GatherRows<T>(const T*, const int64_t*, int64_t, int64_t, T*, cudaStream_t);                 \
  template absl::Status CombineRows<T, W>(const T*, const int64_t*, const W*, int, int64_t, int64_t, T*,             \
                                          cudaStream_t);                                                             \
  template absl::Status ScatterWeightedRows<T, W>(const T*, const int64_t*, const W*, int, int64_t, int64_t, T*,     \
                                                  cudaStream_t);                                                     \
  template absl::Status CombineWeightGrad<T, W>(const T*, const T*, const int64_t*, int, int64_t, int64_t, W*,       \
                                                cudaStream_t);
DYNAMOE_INSTANTIATE(float, float)
DYNAMOE_INSTANTIATE(double, double)
DYNAMOE_INSTANTIATE(bf16, float)
DYNAMOE_INSTANTIATE(f16, float)
#undef DYNAMOE_INSTANTIATE

}  // namespace dynamoe::kernels::cuda
