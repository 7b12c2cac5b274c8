// CPU twin of the fused router: the CPU layer's router (scheduler/router_cpu.cc)
// and the reference the CUDA kernel is tested against, so both devices route
// by one semantics.
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

template <typename F>
absl::Status FusedRouter(const F* logits, const F* bias, const RouterSpec& spec, const RouterOutputsOf<F>& out,
                         const RouterCpuInputs<F>& in) {
  DYNAMOE_RETURN_IF_ERROR(CheckRouterSpec(spec));
  const int64_t T = spec.num_tokens, E = spec.num_experts;
  const int k = spec.top_k;
  if (T > 0) {  // an empty tensor may hand over null pointers
    DYNAMOE_CHECK_ARG(in.scores != nullptr || (logits != nullptr && out.scores != nullptr),
                      "fused router: expected the logits and a scores output, or given scores");
    DYNAMOE_CHECK_ARG(logits != nullptr || out.nonfinite_rows == nullptr,
                      "fused router: counting non-finite rows needs the logits");
  }
  if (out.nonfinite_rows) {
    int64_t nonfinite = 0;
    for (int64_t t = 0; t < T; ++t) {
      const F* l = logits + t * E;
      for (int64_t e = 0; e < E; ++e)
        if (!std::isfinite(l[e])) {
          ++nonfinite;
          break;
        }
    }
    *out.nonfinite_rows = nonfinite;
  }
  const F* scores = in.scores;
  if (scores == nullptr) {
    for (int64_t t = 0; t < T; ++t) {
      const F* l = logits + t * E;
      F* s = out.scores + t * E;
      if (spec.score == ScoreFunction::kSoftmax) {
        F mx = -INFINITY, sum = 0;
        for (int64_t e = 0; e < E; ++e) mx = std::fmax(mx, l[e]);
        for (int64_t e = 0; e < E; ++e) sum += std::exp(l[e] - mx);
        for (int64_t e = 0; e < E; ++e) s[e] = std::exp(l[e] - mx) / sum;
      } else {
        for (int64_t e = 0; e < E; ++e) s[e] = F(1) / (F(1) + std::exp(-l[e]));
      }
    }
    scores = out.scores;
  }
  // Selection key: (noisy) scores + bias. Without a bias the scores are the
  // key as they are (adding 0 changes no comparison), so no copy.
  const F* key = in.key_scores ? in.key_scores : scores;
  std::vector<F> biased;
  if (bias) {
    biased.resize(T * E);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e) biased[t * E + e] = key[t * E + e] + bias[e];
    key = biased.data();
  }
  DYNAMOE_RETURN_IF_ERROR(TopK<F>(key, T, E, k, out.expert_idx, 0, T));
  if (out.weight) {
    for (int64_t t = 0; t < T; ++t) {
      F sum = 0;
      for (int j = 0; j < k; ++j) sum += scores[t * E + out.expert_idx[t * k + j]];
      for (int j = 0; j < k; ++j) {
        const F w = scores[t * E + out.expert_idx[t * k + j]];
        out.weight[t * k + j] = spec.normalize ? w / sum : w;
      }
    }
  }
  if (out.score_sum) {
    for (int64_t e = 0; e < E; ++e) {
      F sum = 0;
      for (int64_t t = 0; t < T; ++t) sum += scores[t * E + e];
      out.score_sum[e] = sum;
    }
  }
  RoutingOptions ro;
  ro.capacity = spec.capacity;
  ro.use_rts = in.use_rts;
  ro.rts_seed = in.rts_seed;
  ro.step = in.step;
  return ComputeRouting(out.expert_idx, T, k, E, ro, out.position, out.kept_counts, out.routed_counts,
                        out.dropped);
}

template absl::Status FusedRouter<float>(const float*, const float*, const RouterSpec&, const RouterOutputsOf<float>&,
                                         const RouterCpuInputs<float>&);
template absl::Status FusedRouter<double>(const double*, const double*, const RouterSpec&,
                                          const RouterOutputsOf<double>&, const RouterCpuInputs<double>&);

absl::Status FusedRouter(const float* logits, const float* bias, const RouterSpec& spec,
                         const RouterOutputs& out) {
  return FusedRouter<float>(logits, bias, spec, out, RouterCpuInputs<float>{});
}

}  // namespace dynamoe::kernels
