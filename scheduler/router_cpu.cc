// The router on the CPU (DeviceOps::Route): ATen for the logits and softmax,
// the kernels of kernels/ for top-k, capacity and positions.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "common/status.h"
#include "kernels/kernels.h"
#include "scheduler/cpu_ops.h"
#include "scheduler/tensor_util.h"

namespace dynamoe::scheduler {

absl::StatusOr<Routing> RouteOnCpu(const at::Tensor& x, const at::Tensor& gate_weight, const at::Tensor& gate_bias,
                                   const at::Tensor& expert_bias, const RouterOptions& options) {
  const int64_t num_tokens = x.size(0);
  const int64_t num_experts = gate_weight.size(0);
  const int top_k = static_cast<int>(options.top_k);
  const at::ScalarType rdtype = RouterDtype(x.scalar_type());
  const bool noisy = options.training && options.noisy_gate_policy != "none";

  at::Tensor xr = x.to(rdtype);
  if (noisy && options.noisy_gate_policy == "Jitter")  // multiplicative noise on the router input
    xr = xr * at::empty_like(xr).uniform_(1.0 - options.jitter_eps, 1.0 + options.jitter_eps);
  Routing r;
  r.logits = at::linear(xr, gate_weight.to(rdtype), gate_bias.defined() ? gate_bias.to(rdtype) : at::Tensor());
  if (options.check_finite && num_tokens > 0) {
    const int64_t bad = (~at::isfinite(r.logits).all(1)).sum().item<int64_t>();
    DYNAMOE_CHECK_ARG(bad == 0, options.name, ": ", bad, " of ", num_tokens,
                      " rows of router logits are not finite (NaN or Inf); check the input or ",
                      "the gate weights, or pass check_finite=false");
  }
  r.scores = at::softmax(r.logits, -1);

  // Selection key: scores (+ noise for RSample) + the aux-loss-free bias.
  at::Tensor key;
  {
    at::NoGradGuard no_grad;
    key = r.scores;
    if (noisy && options.noisy_gate_policy == "RSample") {
      // Gumbel noise on the logits, as DeepSpeed's RSample policy.
      const at::Tensor u = at::empty_like(r.logits).uniform_(1e-10, 1.0);
      key = at::softmax(r.logits - at::log(-at::log(u)), -1);
    }
    if (expert_bias.defined()) key = key + expert_bias.to(rdtype);
    key = key.contiguous();
  }
  r.expert_idx = at::empty({num_tokens, top_k}, x.options().dtype(at::kLong));
  absl::Status status;
  DispatchDataType(rdtype, options.name.c_str(), [&](auto, auto w_tag) {
    using W = decltype(w_tag);
    status = kernels::TopK<W>(Ptr<W>(key), num_tokens, num_experts, top_k,
                              Ptr<int64_t>(r.expert_idx), 0, num_tokens);
  });
  DYNAMOE_RETURN_IF_ERROR(status);

  r.weight = r.scores.gather(1, r.expert_idx);
  if (options.normalize) r.weight = r.weight / r.weight.sum(-1, true);

  kernels::RoutingOptions ro;
  DYNAMOE_ASSIGN_OR_RETURN(ro.capacity, kernels::ExpertCapacity(num_tokens, top_k, num_experts,
                                                                options.capacity_factor, options.min_capacity));
  ro.use_rts = options.use_rts;
  ro.rts_seed = options.rts_seed;
  ro.step = options.step;
  r.capacity = ro.capacity;
  r.position = at::empty({num_tokens, top_k}, r.expert_idx.options());
  r.kept_counts = at::empty({num_experts}, r.expert_idx.options());
  r.routed_counts = at::empty({num_experts}, r.expert_idx.options());
  DYNAMOE_RETURN_IF_ERROR(kernels::ComputeRouting(
      Ptr<int64_t>(r.expert_idx), num_tokens, top_k, num_experts, ro, Ptr<int64_t>(r.position),
      Ptr<int64_t>(r.kept_counts), Ptr<int64_t>(r.routed_counts), &r.dropped));
  r.num_rows = num_tokens * top_k - r.dropped;

  FinishRouting(r, r.routed_counts, options);
  return r;
}

}  // namespace dynamoe::scheduler
