#include "scheduler/moe_step.h"

#include <ATen/ATen.h>

#include "absl/strings/str_join.h"
#include "common/status.h"

namespace dynamoe::scheduler {
namespace {

std::string Shape(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

absl::Status CheckParam(const MoEOptions& o, const at::Tensor& x, const at::Tensor& t, const char* name,
                        std::vector<int64_t> shape) {
  DYNAMOE_CHECK_ARG(t.defined(), o.name(), ": parameter ", name, " is missing");
  DYNAMOE_CHECK_ARG(t.sizes().vec() == shape, o.name(), ": ", name, " must have shape [",
                    absl::StrJoin(shape, ", "), "], got ", Shape(t));
  DYNAMOE_CHECK_ARG(t.device() == x.device(), o.name(), ": ", name, " is on ", t.device().str(),
                    " but x is on ", x.device().str());
  DYNAMOE_CHECK_ARG(t.scalar_type() == x.scalar_type(), o.name(), ": x has dtype ",
                    c10::toString(x.scalar_type()), " but ", name, " has dtype ", c10::toString(t.scalar_type()),
                    "; convert the layer with .to(", c10::toString(x.scalar_type()), ")");
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateInputs(const MoEOptions& o, const StepInputs& in) {
  const at::Tensor& x = in.x;
  DYNAMOE_CHECK_ARG(x.defined(), o.name(), ": x is undefined");
  DYNAMOE_CHECK_ARG(x.dim() >= 1 && x.size(-1) == o.d_model(), o.name(), ": x must have shape [..., d_model=",
                    o.d_model(), "], got ", Shape(x));
  DYNAMOE_CHECK_ARG(x.device().is_cpu(), o.name(), ": x is on ", x.device().str(),
                    "; this build runs on CPU only");
  const auto dt = x.scalar_type();
  DYNAMOE_CHECK_ARG(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16, o.name(),
                    ": x must be float32, float64 or bfloat16, got ", c10::toString(dt));
  const int64_t E = o.num_experts(), d = o.d_model(), h = o.d_hidden();
  DYNAMOE_CHECK_ARG(in.gate_weight.defined() && in.gate_weight.sizes().vec() == std::vector<int64_t>({E, d}),
                    o.name(), ": gate.weight must have shape [", E, ", ", d, "], got ", Shape(in.gate_weight));
  if (in.expert_bias.defined())
    DYNAMOE_CHECK_ARG(in.expert_bias.dim() == 1 && in.expert_bias.size(0) == E, o.name(),
                      ": expert_bias must have shape [", E, "], got ", Shape(in.expert_bias));
  if (in.custom_expert) return absl::OkStatus();
  const ExpertParams& p = in.experts;
  DYNAMOE_RETURN_IF_ERROR(CheckParam(o, x, p.w1, "w1", {E, d, h}));
  DYNAMOE_RETURN_IF_ERROR(CheckParam(o, x, p.w2, "w2", {E, h, d}));
  if (o.gated()) DYNAMOE_RETURN_IF_ERROR(CheckParam(o, x, p.w3, "w3", {E, d, h}));
  if (o.bias()) {
    DYNAMOE_RETURN_IF_ERROR(CheckParam(o, x, p.b1, "b1", {E, h}));
    DYNAMOE_RETURN_IF_ERROR(CheckParam(o, x, p.b2, "b2", {E, d}));
  }
  DYNAMOE_CHECK_ARG(p.activation == o.activation(), o.name(), ": activation \"", p.activation,
                    "\" differs from the options' \"", o.activation(), "\"");
  return absl::OkStatus();
}

RouterOptions MakeRouterOptions(const MoEOptions& options, bool training, int64_t step) {
  RouterOptions ro;
  ro.top_k = options.top_k();
  ro.capacity_factor = options.capacity_factor_for(training);
  ro.min_capacity = options.min_capacity();
  ro.normalize = options.normalize();
  ro.use_rts = options.use_rts();
  ro.rts_seed = static_cast<uint64_t>(options.rts_seed());
  ro.step = step;
  ro.noisy_gate_policy = options.noisy_gate_policy();
  ro.jitter_eps = options.jitter_eps();
  ro.check_finite = options.check_finite();
  ro.training = training;
  ro.name = options.name();
  return ro;
}

StepResult MoEForward(const MoEOptions& options, const StepInputs& in) {
  ThrowIfError(options.Validate());
  ThrowIfError(ValidateInputs(options, in));
  using monitor::Phase;
  StepResult result;
  const at::Tensor x = in.x.reshape({-1, options.d_model()}).contiguous();

  const RouterOptions ro = MakeRouterOptions(options, in.training, in.step);
  Routing routing;
  {
    monitor::ScopedPhase timer(result.times, Phase::kGate);
    routing = ValueOrThrow(Route(x, in.gate_weight, in.expert_bias, ro));
  }
  at::Tensor rows;
  {
    monitor::ScopedPhase timer(result.times, Phase::kDispatch);
    rows = Dispatch(x, routing.position, routing.num_rows);
  }
  at::Tensor out_rows;
  {
    monitor::ScopedPhase timer(result.times, Phase::kExperts);
    if (in.custom_expert) {
      std::vector<at::Tensor> outs;
      const int64_t* counts = routing.kept_counts.data_ptr<int64_t>();
      for (int64_t e = 0, off = 0; e < options.num_experts(); off += counts[e], ++e) {
        if (counts[e] == 0) continue;
        at::Tensor out_e = in.custom_expert(e, rows.narrow(0, off, counts[e]));
        DYNAMOE_THROW_IF(out_e.sizes() != rows.narrow(0, off, counts[e]).sizes(), options.name(),
                         ": custom expert ", e, " must return shape [", counts[e], ", ", options.d_model(),
                         "], got ", Shape(out_e));
        outs.push_back(out_e.to(rows.scalar_type()));
      }
      out_rows = outs.empty() ? rows * 0 : at::cat(outs, 0);
    } else {
      out_rows = ExpertFFN(rows, routing.kept_counts, in.experts);
    }
  }
  {
    monitor::ScopedPhase timer(result.times, Phase::kCombine);
    result.y = Combine(out_rows, routing.weight, routing.position).view(in.x.sizes());
  }
  result.balance_loss = routing.balance_loss;
  result.z_loss = routing.z_loss;
  result.aux_loss = routing.balance_loss * options.balance_loss_weight();
  if (options.z_loss_weight() > 0) result.aux_loss = result.aux_loss + routing.z_loss * options.z_loss_weight();
  result.counts = routing.kept_counts.unsqueeze(0);
  result.routed_counts = routing.routed_counts;
  result.dropped = routing.dropped;
  result.capacity = routing.capacity;
  return result;
}

void UpdateExpertBias(at::Tensor& expert_bias, const at::Tensor& counts, double rate) {
  if (rate <= 0 || !expert_bias.defined()) return;
  at::NoGradGuard no_grad;
  const at::Tensor load = counts.reshape({-1, expert_bias.size(0)}).sum(0).to(expert_bias.scalar_type());
  expert_bias.add_(at::sign(load.mean() - load) * rate);
}

}  // namespace dynamoe::scheduler
