// Fused router on the GPU. Four launches, no floating-point atomics, so every
// output is identical from run to run:
//   RowsKernel     one warp per token: scores, top-k, weights.
//   ExpertKernel   one block per expert: score column sum, drop order
//                  (choice rank, then token), kept rows in token order.
//   OffsetsKernel  one block: expert offsets in the sorted buffer, drops.
//   PlaceKernel    one thread per assignment: position += expert offset.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "common/status.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/kernels_cuda.h"
#include "kernels/kernels.h"

namespace dynamoe::kernels::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;      // warps (tokens) per block in RowsKernel
constexpr int kExpertThreads = 512;  // ExpertKernel block

// Strict order of selection: larger key first, lower index on ties; NaN last.
__device__ inline bool Before(float ka, int64_t a, float kb, int64_t b) {
  ka = ka != ka ? -INFINITY : ka;
  kb = kb != kb ? -INFINITY : kb;
  return ka > kb || (ka == kb && a < b);
}

__global__ void RowsKernel(const float* logits, const float* bias, RouterSpec spec, RouterOutputs out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t t = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / kWarp;
  if (t >= spec.num_tokens) return;
  const int64_t E = spec.num_experts;
  const float* l = logits + t * E;
  float* s = out.scores + t * E;
  if (out.nonfinite_rows) {  // counted here so the caller needs no extra read of the logits
    bool bad = false;
    for (int64_t e = lane; e < E; e += kWarp) bad |= !isfinite(l[e]);
    if (__any_sync(0xffffffffu, bad) && lane == 0)
      atomicAdd(reinterpret_cast<unsigned long long*>(out.nonfinite_rows), 1ull);  // integer: exact
  }
  if (spec.score == ScoreFunction::kSoftmax) {
    float mx = -INFINITY, sum = 0;
    for (int64_t e = lane; e < E; e += kWarp) mx = fmaxf(mx, l[e]);
    for (int o = kWarp / 2; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    for (int64_t e = lane; e < E; e += kWarp) sum += expf(l[e] - mx);
    for (int o = kWarp / 2; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    for (int64_t e = lane; e < E; e += kWarp) s[e] = expf(l[e] - mx) / sum;
  } else {
    for (int64_t e = lane; e < E; e += kWarp) s[e] = 1.0f / (1.0f + expf(-l[e]));
  }
  __syncwarp();
  // k rounds of a warp arg-max, each over the experts ordered after the last pick.
  float prev_key = INFINITY, chosen_sum = 0;
  int64_t prev = -1;
  for (int j = 0; j < spec.top_k; ++j) {
    float best_key = -INFINITY;
    int64_t best = -1;
    for (int64_t e = lane; e < E; e += kWarp) {
      const float key = s[e] + (bias ? bias[e] : 0.0f);
      if ((prev < 0 || Before(prev_key, prev, key, e)) && (best < 0 || Before(key, e, best_key, best)))
        best_key = key, best = e;
    }
    for (int o = kWarp / 2; o > 0; o /= 2) {
      const float ok = __shfl_xor_sync(0xffffffffu, best_key, o);
      const int64_t oe = __shfl_xor_sync(0xffffffffu, best, o);
      if (oe >= 0 && (best < 0 || Before(ok, oe, best_key, best))) best_key = ok, best = oe;
    }
    prev_key = best_key, prev = best;
    const float w = s[best];
    chosen_sum += w;
    if (lane == 0) out.expert_idx[t * spec.top_k + j] = best, out.weight[t * spec.top_k + j] = w;
  }
  __syncwarp();
  if (spec.normalize)
    for (int j = lane; j < spec.top_k; j += kWarp) out.weight[t * spec.top_k + j] /= chosen_sum;
}

// position[a] holds, per expert block: 0 kept / -1 dropped after the drop pass,
// then the row rank within the expert.
__global__ void ExpertKernel(RouterSpec spec, RouterOutputs out) {
  using Scan = cub::BlockScan<int64_t, kExpertThreads>;
  using Reduce = cub::BlockReduce<float, kExpertThreads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } tmp;
  const int64_t e = blockIdx.x, T = spec.num_tokens, E = spec.num_experts;
  const int k = spec.top_k;
  float part = 0;
  for (int64_t t = threadIdx.x; t < T; t += kExpertThreads) part += out.scores[t * E + e];
  const float total_score = Reduce(tmp.reduce).Sum(part);
  if (threadIdx.x == 0) out.score_sum[e] = total_score;
  __syncthreads();

  const bool limited = spec.capacity != kUnlimitedCapacity;
  int64_t routed = 0;
  if (limited) {  // claim order: every first choice, then every second choice, ...
    for (int j = 0; j < k; ++j) {
      for (int64_t base = 0; base < T; base += kExpertThreads) {
        const int64_t t = base + threadIdx.x;
        const int64_t mine = t < T && out.expert_idx[t * k + j] == e;
        int64_t rank, count;
        Scan(tmp.scan).ExclusiveSum(mine, rank, count);
        __syncthreads();
        if (mine) out.position[t * k + j] = routed + rank < spec.capacity ? 0 : -1;
        routed += count;
      }
    }
  }
  int64_t kept = 0;  // kept rows, in token order
  for (int64_t base = 0; base < T; base += kExpertThreads) {
    const int64_t t = base + threadIdx.x;
    int slot = -1;
    if (t < T)
      for (int j = 0; j < k; ++j)
        if (out.expert_idx[t * k + j] == e) slot = j;
    const bool keep = slot >= 0 && (!limited || out.position[t * k + slot] == 0);
    int64_t rank, count;
    Scan(tmp.scan).ExclusiveSum(int64_t(keep), rank, count);
    __syncthreads();
    if (keep) out.position[t * k + slot] = kept + rank;
    kept += count;
  }
  if (threadIdx.x == 0) {
    out.kept_counts[e] = kept;
    out.routed_counts[e] = limited ? routed : kept;
  }
}

__global__ void OffsetsKernel(RouterSpec spec, RouterOutputs out, int64_t* offsets) {
  using Scan = cub::BlockScan<int64_t, kExpertThreads>;
  __shared__ typename Scan::TempStorage tmp;
  int64_t running = 0, dropped = 0;
  for (int64_t base = 0; base < spec.num_experts; base += kExpertThreads) {
    const int64_t e = base + threadIdx.x;
    const int64_t kept = e < spec.num_experts ? out.kept_counts[e] : 0;
    if (e < spec.num_experts) dropped += out.routed_counts[e] - kept;
    int64_t excl, total;
    Scan(tmp).ExclusiveSum(kept, excl, total);
    __syncthreads();
    if (e < spec.num_experts) offsets[e] = running + excl;
    running += total;
  }
  using Reduce = cub::BlockReduce<int64_t, kExpertThreads>;
  __shared__ typename Reduce::TempStorage red;
  const int64_t all = Reduce(red).Sum(dropped);
  if (threadIdx.x == 0) *out.dropped = all;
}

__global__ void PlaceKernel(int64_t n, const int64_t* expert_idx, const int64_t* offsets, int64_t* position) {
  for (int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; a < n; a += int64_t(gridDim.x) * blockDim.x)
    if (position[a] >= 0) position[a] += offsets[expert_idx[a]];
}

}  // namespace

size_t RouterWorkspaceBytes(const RouterSpec& spec) { return sizeof(int64_t) * spec.num_experts; }

absl::Status FusedRouter(const float* logits, const float* bias, const RouterSpec& spec, const RouterOutputs& out,
                         void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  DYNAMOE_RETURN_IF_ERROR(CheckRouterSpec(spec));
  if (workspace_bytes < RouterWorkspaceBytes(spec))
    return absl::InvalidArgumentError(absl::StrCat("router workspace: need ", RouterWorkspaceBytes(spec),
                                                   " bytes, got ", workspace_bytes));
  const int64_t T = spec.num_tokens, E = spec.num_experts;
  if (out.nonfinite_rows) DYNAMOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(out.nonfinite_rows, 0, sizeof(int64_t), stream));
  if (T > 0) {
    const int64_t blocks = (T + kRowsPerBlock - 1) / kRowsPerBlock;
    if (blocks > 2147483647) return absl::InvalidArgumentError("num_tokens exceeds the grid limit");
    RowsKernel<<<static_cast<unsigned>(blocks), kRowsPerBlock * kWarp, 0, stream>>>(logits, bias, spec, out);
    DYNAMOE_CUDA_CHECK_LAUNCH();
  }
  if (E > 2147483647) return absl::InvalidArgumentError("num_experts exceeds the grid limit");
  ExpertKernel<<<static_cast<unsigned>(E), kExpertThreads, 0, stream>>>(spec, out);
  DYNAMOE_CUDA_CHECK_LAUNCH();
  auto* offsets = static_cast<int64_t*>(workspace);
  OffsetsKernel<<<1, kExpertThreads, 0, stream>>>(spec, out, offsets);
  DYNAMOE_CUDA_CHECK_LAUNCH();
  const int64_t n = T * spec.top_k;
  if (n > 0) {
    PlaceKernel<<<BlocksFor(n, 256), 256, 0, stream>>>(n, out.expert_idx, offsets, out.position);
    DYNAMOE_CUDA_CHECK_LAUNCH();
  }
  return absl::OkStatus();
}

}  // namespace dynamoe::kernels::cuda
