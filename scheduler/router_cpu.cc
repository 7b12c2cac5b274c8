// The router on the CPU (DeviceOps::Route): ATen for the logits, the softmax
// and the weights (the autograd graph), and kernels::FusedRouter, the CUDA
// router's CPU twin, for the selection key, top-k, capacity, positions,
// counts and the non-finite check, so both devices select and place alike.
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
  // ATen's softmax, not the twin's: it is in the autograd graph, and the
  // references compare against it bit for bit (the twin's differs in the last bits).
  r.scores = at::softmax(r.logits, -1);
  const at::Tensor logits = r.logits.contiguous(), scores = r.scores.contiguous();
  at::Tensor key_scores, bias;
  {
    at::NoGradGuard no_grad;
    if (noisy && options.noisy_gate_policy == "RSample") {
      // Gumbel noise on the logits, as DeepSpeed's RSample policy.
      const at::Tensor u = at::empty_like(r.logits).uniform_(1e-10, 1.0);
      key_scores = at::softmax(r.logits - at::log(-at::log(u)), -1).contiguous();
    }
    if (expert_bias.defined()) bias = expert_bias.to(rdtype).contiguous();
  }
  DYNAMOE_ASSIGN_OR_RETURN(r.capacity, kernels::ExpertCapacity(num_tokens, top_k, num_experts,
                                                               options.capacity_factor, options.min_capacity));
  const kernels::RouterSpec spec{num_tokens, num_experts, top_k, kernels::ScoreFunction::kSoftmax,
                                 options.normalize, r.capacity};
  const auto i64 = x.options().dtype(at::kLong);
  r.expert_idx = at::empty({num_tokens, top_k}, i64);
  r.position = at::empty({num_tokens, top_k}, i64);
  r.kept_counts = at::empty({num_experts}, i64);
  r.routed_counts = at::empty({num_experts}, i64);
  int64_t nonfinite = 0;
  absl::Status status;
  DispatchDataType(rdtype, options.name.c_str(), [&](auto, auto w_tag) {
    using W = decltype(w_tag);
    kernels::RouterOutputsOf<W> out;  // no weight or score sums: ATen's, in the graph
    out.expert_idx = Ptr<int64_t>(r.expert_idx);
    out.position = Ptr<int64_t>(r.position);
    out.kept_counts = Ptr<int64_t>(r.kept_counts);
    out.routed_counts = Ptr<int64_t>(r.routed_counts);
    out.dropped = &r.dropped;
    out.nonfinite_rows = options.check_finite ? &nonfinite : nullptr;
    kernels::RouterCpuInputs<W> in;
    in.scores = Ptr<W>(scores);
    in.key_scores = key_scores.defined() ? Ptr<W>(key_scores) : nullptr;
    in.use_rts = options.use_rts;
    in.rts_seed = options.rts_seed;
    in.step = options.step;
    status = kernels::FusedRouter<W>(Ptr<W>(logits), bias.defined() ? Ptr<W>(bias) : nullptr, spec, out, in);
  });
  DYNAMOE_CHECK_ARG(nonfinite == 0, options.name, ": ", nonfinite, " of ", num_tokens,
                    " rows of router logits are not finite (NaN or Inf); check the input or ",
                    "the gate weights, or pass check_finite=false");
  DYNAMOE_RETURN_IF_ERROR(status);

  r.weight = r.scores.gather(1, r.expert_idx);
  if (options.normalize) r.weight = r.weight / r.weight.sum(-1, true);
  r.num_rows = num_tokens * top_k - r.dropped;

  FinishRouting(r, r.routed_counts, options);
  return r;
}

}  // namespace dynamoe::scheduler
