// CPU kernels of the MoE data path. Raw pointers and sizes in, status out;
// no framework types (DESIGN.md). Kernels that loop over rows take a
// [row_begin, row_end) range so the caller can split the work over threads.
// The CUDA versions are declared in kernels/cuda/kernels_cuda.h and are tested
// against these.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/enum_names.h"
#include "kernels/dtype.h"

namespace dynamoe::kernels {

constexpr int kMaxTopK = 64;
// Capacity value meaning "no limit" (dropless).
constexpr int64_t kUnlimitedCapacity = -1;

// Capacity per expert, Tutel's signed convention:
//   capacity_factor > 0: max(min_capacity, ceil(top_k * num_tokens / num_experts * cf))
//   capacity_factor == 0: kUnlimitedCapacity (dropless)
//   capacity_factor < 0: dropless up to the same bound computed with |cf|.
// Without padding both signs drop the same assignments; they differ only in
// intent (a fixed buffer vs. a safety bound), kept for Tutel compatibility.
// The bound is clamped to num_tokens (no expert can receive more), so any
// finite factor is exact. InvalidArgument names a bad argument.
absl::StatusOr<int64_t> ExpertCapacity(int64_t num_tokens, int top_k, int64_t num_experts,
                                       double capacity_factor, int64_t min_capacity);

// Deterministic top-k per row: larger key first, lower expert index on ties.
// key: [num_tokens, num_experts]; expert_idx: [num_tokens, top_k].
template <typename T>
absl::Status TopK(const T* key, int64_t num_tokens, int64_t num_experts, int top_k,
                  int64_t* expert_idx, int64_t row_begin, int64_t row_end);

// Seeded priority used by random token selection (use_rts): a pure function of
// (seed, step, token, choice), identical on every rank and device.
double RtsPriority(uint64_t seed, int64_t step, int64_t token, int choice);

struct RoutingOptions {
  int64_t capacity = kUnlimitedCapacity;  // per expert, or kUnlimitedCapacity
  bool use_rts = false;                   // random instead of positional drop order
  uint64_t rts_seed = 0;
  int64_t step = 0;
};

// From the top-k choices, decides which assignments are kept and where each
// lands in the expert-sorted buffer.
//   expert_idx:    [num_tokens * top_k] chosen experts (row-major [token][choice])
//   position:      [num_tokens * top_k] out: row in the sorted buffer, -1 if dropped
//   kept_counts:   [num_experts] out: rows per expert in the sorted buffer
//   routed_counts: [num_experts] out: assignments per expert before capacity
// Drop order: every token's first choice claims a slot before any second choice
// (then by token index, or by RtsPriority with use_rts). Within an expert the
// kept rows are ordered by token index, so the buffer is deterministic.
absl::Status ComputeRouting(const int64_t* expert_idx, int64_t num_tokens, int top_k,
                            int64_t num_experts, const RoutingOptions& options,
                            int64_t* position, int64_t* kept_counts,
                            int64_t* routed_counts, int64_t* num_dropped);

// Inverse of `position`: assignment[row] = token * top_k + choice for each kept row.
absl::Status InvertPositions(const int64_t* position, int64_t num_assignments,
                             int64_t num_rows, int64_t* assignment);

enum class ScoreFunction { kSoftmax, kSigmoid };

// The fused router: scores, top-k, weights, capacity positions and the
// balance-loss statistics of [num_tokens, num_experts] logits. The CUDA kernel
// takes float; the CPU twin float or double, and is the CPU layer's router.
struct RouterSpec {
  int64_t num_tokens = 0;
  int64_t num_experts = 0;
  int top_k = 1;
  ScoreFunction score = ScoreFunction::kSoftmax;
  bool normalize = true;                  // weights renormalised over the k choices
  int64_t capacity = kUnlimitedCapacity;  // per expert
};
// Every pointer is required by the CUDA kernel except nonfinite_rows; the CPU
// twin also skips weight and score_sum when null (the CPU layer computes its
// weights in the autograd graph).
template <typename T>
struct RouterOutputsOf {
  T* scores = nullptr;              // [T, E] softmax or sigmoid of the logits
  int64_t* expert_idx = nullptr;    // [T, k] by key = score + bias, larger first, lower index on ties
  T* weight = nullptr;              // [T, k] the chosen scores (renormalised when normalize)
  int64_t* position = nullptr;      // [T, k] row in the expert-sorted buffer, -1 if dropped
  int64_t* kept_counts = nullptr;   // [E]
  int64_t* routed_counts = nullptr; // [E] before capacity
  T* score_sum = nullptr;           // [E] sum over tokens of scores (balance loss)
  int64_t* dropped = nullptr;       // [1]
  int64_t* nonfinite_rows = nullptr; // [1] rows with a NaN or Inf logit; optional
};
using RouterOutputs = RouterOutputsOf<float>;  // the CUDA kernel's
// What the CPU layer's router gives the twin beyond the CUDA kernel's inputs.
template <typename T>
struct RouterCpuInputs {
  // [T, E] scores the caller computed (ATen's softmax, in the autograd graph;
  // the twin's scalar softmax differs from it in the last bits): used instead
  // of scoring the logits, which are then only checked for non-finite rows
  // (null when nonfinite_rows is). out.scores is not written.
  const T* scores = nullptr;
  // [T, E] replaces the scores in the selection key (RSample's noisy
  // softmax); the bias is still added.
  const T* key_scores = nullptr;
  // ComputeRouting's random drop order (RoutingOptions).
  bool use_rts = false;
  uint64_t rts_seed = 0;
  int64_t step = 0;
};
// Checks the spec (sizes, top_k range); shared by the CPU and CUDA versions.
absl::Status CheckRouterSpec(const RouterSpec& spec);
// CPU twin of cuda::FusedRouter, T = float or double. bias: [E] added to the
// selection key only, or nullptr. Drop order and buffer order are those of
// ComputeRouting.
template <typename T>
absl::Status FusedRouter(const T* logits, const T* bias, const RouterSpec& spec, const RouterOutputsOf<T>& out,
                         const RouterCpuInputs<T>& in);
// The CUDA kernel's contract exactly (float, no CPU inputs): its oracle.
absl::Status FusedRouter(const float* logits, const float* bias, const RouterSpec& spec,
                         const RouterOutputs& out);

// dst[row] = src[row_index[row]] for rows in [row_begin, row_end); d columns.
template <typename T>
void GatherRows(const T* src, const int64_t* row_index, int64_t d, T* dst,
                int64_t row_begin, int64_t row_end);

// out[t] = sum_j weight[t, j] * rows[position[t, j]] over kept j, summed in
// choice order (deterministic, no atomics). weight == nullptr means 1.
template <typename T, typename W>
void CombineRows(const T* rows, const int64_t* position, const W* weight, int top_k,
                 int64_t d, T* out, int64_t token_begin, int64_t token_end);

// Backward of CombineRows with respect to rows:
// grad_rows[row] = weight[a] * grad_out[a / top_k] with a = assignment[row].
template <typename T, typename W>
void ScatterWeightedRows(const T* grad_out, const int64_t* assignment, const W* weight,
                         int top_k, int64_t d, T* grad_rows, int64_t row_begin,
                         int64_t row_end);

// Backward of CombineRows with respect to weight:
// grad_weight[t, j] = <grad_out[t], rows[position[t, j]]>, 0 where dropped.
template <typename T, typename W>
void CombineWeightGrad(const T* grad_out, const T* rows, const int64_t* position,
                       int top_k, int64_t d, W* grad_weight, int64_t token_begin,
                       int64_t token_end);

enum class Activation { kGelu, kRelu, kSilu };  // gelu is the erf form (torch's default)
// The one list of their names (MoEOptions::activation's values).
inline constexpr EnumNames<Activation, 3> kActivationNames(std::array<absl::string_view, 3>{"gelu", "relu", "silu"});

// a = act(h) * g (g == nullptr: a = act(h)) over [begin, end) of n elements.
template <typename T>
void ActivationForward(const T* h, const T* g, Activation act, T* a, int64_t begin, int64_t end);

// Backward through a = act(h) [* g], one pass: grad_h = grad_a [* g] act'(h),
// grad_g = grad_a act(h) (when g), a_out = a (when non-null, for the next
// weight gradient). grad_h may alias grad_a.
template <typename T>
void ActivationBackward(const T* grad_a, const T* h, const T* g, Activation act, T* grad_h, T* grad_g, T* a_out,
                        int64_t begin, int64_t end);

}  // namespace dynamoe::kernels
