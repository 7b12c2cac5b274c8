// Expert histogram on the GPU (integer atomics only: the result is exact).
#include "common/status.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/kernels_cuda.h"

namespace dynamoe::kernels::cuda {

__global__ void ExpertHistogramKernel(const int64_t* expert_idx, int64_t num_assignments,
                                      int64_t num_experts, unsigned long long* counts) {
  extern __shared__ unsigned int local[];
  for (int64_t e = threadIdx.x; e < num_experts; e += blockDim.x) local[e] = 0;
  __syncthreads();
  for (int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; a < num_assignments;
       a += int64_t(gridDim.x) * blockDim.x)
    atomicAdd(&local[expert_idx[a]], 1u);
  __syncthreads();
  for (int64_t e = threadIdx.x; e < num_experts; e += blockDim.x)
    if (local[e]) atomicAdd(&counts[e], static_cast<unsigned long long>(local[e]));
}

absl::Status ExpertHistogram(const int64_t* expert_idx, int64_t num_assignments,
                             int64_t num_experts, int64_t* counts, cudaStream_t stream) {
  if (num_experts <= 0 || num_experts > 12288)
    return absl::InvalidArgumentError(absl::StrCat("num_experts must be in [1, 12288], got ", num_experts));
  DYNAMOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(counts, 0, sizeof(int64_t) * num_experts, stream));
  if (num_assignments == 0) return absl::OkStatus();
  constexpr unsigned kThreads = 256;
  ExpertHistogramKernel<<<BlocksFor(num_assignments, kThreads), kThreads,
                          sizeof(unsigned) * num_experts, stream>>>(
      expert_idx, num_assignments, num_experts, reinterpret_cast<unsigned long long*>(counts));
  DYNAMOE_CUDA_CHECK_LAUNCH();
  return absl::OkStatus();
}

bool DeviceAvailable() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace dynamoe::kernels::cuda
