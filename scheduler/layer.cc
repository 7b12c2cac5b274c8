#include "scheduler/layer.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "config/config.h"
#include "scheduler/cpu_ops.h"

namespace dynamoe::scheduler {
namespace {

absl::Status CheckLinear(const MoEOptions& o, const char* name, const at::Tensor& weight, const at::Tensor& bias,
                         int64_t out, int64_t in) {
  DYNAMOE_CHECK_ARG(weight.defined() && weight.sizes() == at::IntArrayRef({out, in}), o.name(), ": ", name,
                    ".weight must have shape [", out, ", ", in, "] (use_residual=true), got ",
                    weight.defined() ? absl::StrCat("[", absl::StrJoin(weight.sizes(), ", "), "]") : "none");
  DYNAMOE_CHECK_ARG(!bias.defined() || bias.sizes() == at::IntArrayRef({out}), o.name(), ": ", name,
                    ".bias must have shape [", out, "]");
  return absl::OkStatus();
}

}  // namespace

Layer::Layer(MoEOptions options, runtime::CommunicatorPtr comm, c10::intrusive_ptr<LayerState> state,
             bool custom_experts)
    : options_(ValueOrThrow(ValidatedOptions::Make(std::move(options)))), comm_(std::move(comm)),
      state_(std::move(state)), custom_experts_(custom_experts) {
  activation_ = ValueOrThrow(kernels::kActivationNames.Parse(options_->activation(), "activation"));
  if (options_->name().empty()) options_.set_name(NextDefaultLayerName());
  runtime::GlobalConfig();  // read, validate and log the environment once
  if (comm_)
    DYNAMOE_THROW_IF(options_->num_experts() % comm_->size() != 0, options_->name(), ": num_experts=",
                     options_->num_experts(), " must be divisible by the expert-parallel group size ", comm_->size());
  if (!state_) state_ = c10::make_intrusive<LayerState>();
}

int64_t Layer::num_local_experts() const { return LocalExperts(options_.get(), comm_); }

int64_t Layer::first_expert() const { return comm_ ? comm_->rank() * num_local_experts() : 0; }

void Layer::set_schedule(const std::string& kind, std::optional<int64_t> group_size,
                         std::optional<int64_t> overlap_degree) {
  schedule_ = ValueOrThrow(ScheduleOptions::Make(options_->name(), kind, group_size, overlap_degree));
}

ScheduleOptions Layer::schedule() const { return schedule_.value_or(ScheduleOptions::FromConfig()); }

void Layer::set_placement(const std::string& policy) { state_->set_placement(policy); }

StepInputs Layer::Inputs(const at::Tensor& x, const LayerTensors& t, bool training) const {
  StepInputs in;
  in.x = x;
  in.gate_weight = t.gate_weight;
  in.gate_bias = t.gate_bias;
  in.expert_bias = t.expert_bias;
  in.experts = t.experts;
  in.experts.activation = activation_;
  in.custom_experts = custom_experts_;
  in.comm = comm_;
  in.state = state_;
  in.schedule = schedule_;
  in.training = training;
  return in;
}

StepResult Layer::Forward(const at::Tensor& x, const LayerTensors& t, bool training,
                          const CustomExpertFn& custom_expert) const {
  CheckResidual(t.residual);  // before the step counts itself
  StepInputs in = Inputs(x, t, training);
  in.custom_expert = custom_expert;
  StepResult r = MoEForward(options_, in);
  r.y = Residual(x, r.y, t.residual);
  return r;
}

c10::intrusive_ptr<PendingStep> Layer::Dispatch(const at::Tensor& x, const LayerTensors& t, bool training) const {
  DYNAMOE_THROW_IF(!custom_experts_, options_->name(), ": dispatch is for custom experts; this layer has built-in "
                   "FFN experts (use forward)");
  return BeginStep(options_, Inputs(x, t, training));
}

StepResult Layer::Finish(PendingStep& pending, const std::vector<at::Tensor>& outputs,
                         const ResidualParams& residual) const {
  CheckResidual(residual);
  const at::Tensor x = pending.input();
  StepResult r = pending.Finish(outputs);
  r.y = Residual(x, r.y, residual);
  return r;
}

void Layer::CheckResidual(const ResidualParams& r) const {
  if (!options_->use_residual()) return;
  const int64_t d = options_->d_model(), h = options_->d_hidden();
  ThrowIfError(CheckLinear(options_.get(), "residual_fc1", r.fc1_weight, r.fc1_bias, h, d));
  ThrowIfError(CheckLinear(options_.get(), "residual_fc2", r.fc2_weight, r.fc2_bias, d, h));
  ThrowIfError(CheckLinear(options_.get(), "residual_coef", r.coef_weight, r.coef_bias, 2, d));
}

at::Tensor Layer::Residual(const at::Tensor& x, const at::Tensor& y, const ResidualParams& r) const {
  if (!options_->use_residual()) return y;
  const at::Tensor coef = at::softmax(at::linear(x, r.coef_weight, r.coef_bias), -1);
  const at::Tensor mlp =
      at::linear(Activate(at::linear(x, r.fc1_weight, r.fc1_bias), activation_), r.fc2_weight, r.fc2_bias);
  return y * coef.narrow(-1, 0, 1) + mlp * coef.narrow(-1, 1, 1);
}

}  // namespace dynamoe::scheduler
