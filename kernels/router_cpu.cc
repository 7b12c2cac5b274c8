// CPU twin of the fused router: the reference the CUDA kernel is tested
// against, built from the same pieces as the CPU layer's router.
#include <cmath>
#include <vector>

#include "common/status.h"
#include "kernels/kernels.h"

namespace dynamoe::kernels {

absl::Status CheckRouterSpec(const RouterSpec& spec) {
  DYNAMOE_CHECK_ARG(spec.num_tokens >= 0, "num_tokens must be >= 0, got ", spec.num_tokens);
  DYNAMOE_CHECK_ARG(spec.num_experts >= 1, "num_experts must be >= 1, got ", spec.num_experts);
  DYNAMOE_CHECK_ARG(spec.top_k >= 1 && spec.top_k <= spec.num_experts && spec.top_k <= kMaxTopK,
                    "top_k must be in [1, min(num_experts=", spec.num_experts, ", ", kMaxTopK, ")], got ",
                    spec.top_k);
  DYNAMOE_CHECK_ARG(spec.capacity == kUnlimitedCapacity || spec.capacity >= 0,
                    "capacity must be >= 0 or kUnlimitedCapacity, got ", spec.capacity);
  return absl::OkStatus();
}

absl::Status FusedRouter(const float* logits, const float* bias, const RouterSpec& spec,
                         const RouterOutputs& out) {
  DYNAMOE_RETURN_IF_ERROR(CheckRouterSpec(spec));
  const int64_t T = spec.num_tokens, E = spec.num_experts;
  const int k = spec.top_k;
  std::vector<float> key(T * E);
  int64_t nonfinite = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits + t * E;
    for (int64_t e = 0; e < E; ++e)
      if (!std::isfinite(l[e])) {
        ++nonfinite;
        break;
      }
    float* s = out.scores + t * E;
    if (spec.score == ScoreFunction::kSoftmax) {
      float mx = -INFINITY, sum = 0;
      for (int64_t e = 0; e < E; ++e) mx = std::fmax(mx, l[e]);
      for (int64_t e = 0; e < E; ++e) sum += std::exp(l[e] - mx);
      for (int64_t e = 0; e < E; ++e) s[e] = std::exp(l[e] - mx) / sum;
    } else {
      for (int64_t e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + std::exp(-l[e]));
    }
    for (int64_t e = 0; e < E; ++e) key[t * E + e] = s[e] + (bias ? bias[e] : 0.0f);
  }
  if (out.nonfinite_rows) *out.nonfinite_rows = nonfinite;
  DYNAMOE_RETURN_IF_ERROR(TopK<float>(key.data(), T, E, k, out.expert_idx, 0, T));
  for (int64_t t = 0; t < T; ++t) {
    float sum = 0;
    for (int j = 0; j < k; ++j) sum += out.scores[t * E + out.expert_idx[t * k + j]];
    for (int j = 0; j < k; ++j) {
      const float w = out.scores[t * E + out.expert_idx[t * k + j]];
      out.weight[t * k + j] = spec.normalize ? w / sum : w;
    }
  }
  for (int64_t e = 0; e < E; ++e) {
    float sum = 0;
    for (int64_t t = 0; t < T; ++t) sum += out.scores[t * E + e];
    out.score_sum[e] = sum;
  }
  RoutingOptions ro;
  ro.capacity = spec.capacity;
  return ComputeRouting(out.expert_idx, T, k, E, ro, out.position, out.kept_counts, out.routed_counts,
                        out.dropped);
}

}  // namespace dynamoe::kernels
