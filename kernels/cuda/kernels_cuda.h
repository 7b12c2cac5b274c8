// CUDA launchers of the MoE data path (twins of kernels/kernels.h). Device
// pointers, sizes and a stream in, status out. Element types use the
// layout-compatible kernels::bf16 / kernels::f16; no torch types here.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/dtype.h"
#include "kernels/kernels.h"

typedef struct CUstream_st* cudaStream_t;

namespace dynamoe::kernels::cuda {

// True when a CUDA device is usable in this process.
bool DeviceAvailable();

// counts[e] = number of entries of expert_idx equal to e (int64 counts).
absl::Status ExpertHistogram(const int64_t* expert_idx, int64_t num_assignments,
                             int64_t num_experts, int64_t* counts, cudaStream_t stream);

// The fused router (twin of kernels::FusedRouter): every output of
// RouterOutputs in four launches, identical from run to run. `workspace`
// (device, RouterWorkspaceBytes) holds the expert offsets.
size_t RouterWorkspaceBytes(const RouterSpec& spec);
absl::Status FusedRouter(const float* logits, const float* bias, const RouterSpec& spec,
                         const RouterOutputs& out, void* workspace, size_t workspace_bytes,
                         cudaStream_t stream);

// assignment[position[a]] = a for each kept a (positions must be a
// permutation of the rows, as the router makes them).
absl::Status InvertPositions(const int64_t* position, int64_t num_assignments, int64_t* assignment,
                             cudaStream_t stream);

template <typename T>
absl::Status GatherRows(const T* src, const int64_t* row_index, int64_t num_rows, int64_t d,
                        T* dst, cudaStream_t stream);

template <typename T, typename W>
absl::Status CombineRows(const T* rows, const int64_t* position, const W* weight, int top_k,
                         int64_t num_tokens, int64_t d, T* out, cudaStream_t stream);

template <typename T, typename W>
absl::Status ScatterWeightedRows(const T* grad_out, const int64_t* assignment, const W* weight,
                                 int top_k, int64_t num_rows, int64_t d, T* grad_rows,
                                 cudaStream_t stream);

template <typename T, typename W>
absl::Status CombineWeightGrad(const T* grad_out, const T* rows, const int64_t* position,
                               int top_k, int64_t num_tokens, int64_t d, W* grad_weight,
                               cudaStream_t stream);

// Twins of kernels::ActivationForward / ActivationBackward over n elements.
template <typename T>
absl::Status ActivationForward(const T* h, const T* g, Activation act, int64_t n, T* a, cudaStream_t stream);
template <typename T>
absl::Status ActivationBackward(const T* grad_a, const T* h, const T* g, Activation act, int64_t n, T* grad_h,
                                T* grad_g, T* a_out, cudaStream_t stream);

}  // namespace dynamoe::kernels::cuda
