#include "scheduler/routing.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <limits>

namespace dynamoe::scheduler {

at::ScalarType RouterDtype(at::ScalarType data_dtype) {
  return data_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void FinishRouting(Routing& r, const at::Tensor& routed, const RouterOptions& options) {
  const int64_t num_tokens = r.logits.size(0), num_experts = r.logits.size(1), top_k = options.top_k;
  if (options.normalize_kept && num_tokens > 0) {
    // Dropped choices weigh 0, the kept ones are rescaled to sum 1; the clamp
    // keeps a token with every choice dropped at 0 instead of NaN.
    const at::Tensor kept = r.position.ge(0).to(r.weight.scalar_type());
    const at::Tensor w = r.weight * kept;
    const double eps = r.weight.scalar_type() == at::kDouble ? std::numeric_limits<double>::epsilon()
                                                              : std::numeric_limits<float>::epsilon();
    r.weight = w / w.sum(-1, true).clamp_min(eps);
  }
  if (num_tokens == 0) {
    // Keep the losses in the graph even with no tokens.
    r.balance_loss = r.logits.sum() * 0;
    r.z_loss = r.logits.sum() * 0;
    return;
  }
  at::Tensor fraction;
  if (options.balance_first_choice) {
    at::NoGradGuard no_grad;
    const at::Tensor first = r.expert_idx.select(1, 0);
    fraction = at::zeros({num_experts}, r.scores.options())
                   .scatter_add_(0, first, at::ones({num_tokens}, r.scores.options())) /
               static_cast<double>(num_tokens);
  } else {
    fraction = routed.to(r.scores.scalar_type()) / static_cast<double>(num_tokens * top_k);
  }
  r.balance_loss = (r.scores.mean(0) * fraction).sum() * static_cast<double>(num_experts);
  r.z_loss = at::logsumexp(r.logits, {1}).pow(2).mean();
}

}  // namespace dynamoe::scheduler
