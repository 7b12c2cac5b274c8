#include "bindings/moe_layer.h"

#include <torch/nn/init.h>

#include <cmath>

#include "common/status.h"
#include "runtime/config.h"

namespace dynamoe {

MoELayerImpl::MoELayerImpl(MoEOptions options_, runtime::CommunicatorPtr ep_group)
    : options(std::move(options_)), ep_group_(std::move(ep_group)) {
  Build(nullptr);
}

MoELayerImpl::MoELayerImpl(MoEOptions options_, const ExpertFactory& expert_factory,
                           runtime::CommunicatorPtr ep_group)
    : options(std::move(options_)), ep_group_(std::move(ep_group)) {
  DYNAMOE_THROW_IF(!expert_factory, options.name(), ": expert_factory is empty");
  Build(&expert_factory);
}

void MoELayerImpl::Build(const ExpertFactory* expert_factory) {
  ThrowIfError(options.Validate());
  if (options.name().empty()) options.name(scheduler::NextDefaultLayerName());
  runtime::GlobalConfig();  // read, validate and log the environment once
  state_ = c10::make_intrusive<scheduler::LayerState>();
  if (ep_group_)
    DYNAMOE_THROW_IF(options.num_experts() % ep_group_->size() != 0, options.name(), ": num_experts=",
                     options.num_experts(), " must be divisible by the expert-parallel group size ",
                     ep_group_->size());
  const int64_t E = options.num_experts(), El = num_local_experts(), d = options.d_model(), h = options.d_hidden();
  gate = register_module("gate", torch::nn::Linear(torch::nn::LinearOptions(d, E).bias(options.router_bias())));
  if (expert_factory) {
    experts = register_module("experts", torch::nn::ModuleList());
    for (int64_t e = first_expert(); e < first_expert() + El; ++e) {
      custom_experts_.push_back((*expert_factory)(e));
      experts->push_back(custom_experts_.back().ptr());
    }
  } else {
    w1 = register_parameter("w1", torch::empty({El, d, h}));
    w2 = register_parameter("w2", torch::empty({El, h, d}));
    if (options.gated()) w3 = register_parameter("w3", torch::empty({El, d, h}));
    if (options.bias()) {
      b1 = register_parameter("b1", torch::empty({El, h}));
      b2 = register_parameter("b2", torch::empty({El, d}));
    }
  }
  expert_bias = register_buffer("expert_bias", torch::zeros({E}));
  if (options.use_residual()) {
    residual_fc1 = register_module("residual_fc1", torch::nn::Linear(d, h));
    residual_fc2 = register_module("residual_fc2", torch::nn::Linear(h, d));
    residual_coef = register_module("residual_coef", torch::nn::Linear(d, 2));
  }
  reset_parameters();
}

void MoELayerImpl::set_placement(const std::string& policy) { state_->set_placement(policy); }

void MoELayerImpl::set_schedule(const std::string& kind, int64_t group_size, int64_t overlap_degree) {
  schedule_ = scheduler::ScheduleOptions::Make(kind, group_size, overlap_degree);
}

std::string MoELayerImpl::schedule() const {
  return schedule_.value_or(scheduler::ScheduleOptions::FromConfig()).Describe();
}

int64_t MoELayerImpl::num_local_experts() const { return scheduler::LocalExperts(options, ep_group_); }

int64_t MoELayerImpl::first_expert() const { return ep_group_ ? ep_group_->rank() * num_local_experts() : 0; }

void MoELayerImpl::reset_parameters() {
  // Each expert initialised like nn.Linear(d_model, d_hidden) / (d_hidden, d_model).
  torch::NoGradGuard no_grad;
  const double in1 = 1.0 / std::sqrt(static_cast<double>(options.d_model()));
  const double in2 = 1.0 / std::sqrt(static_cast<double>(options.d_hidden()));
  if (w1.defined()) w1.uniform_(-in1, in1);
  if (w3.defined()) w3.uniform_(-in1, in1);
  if (w2.defined()) w2.uniform_(-in2, in2);
  if (b1.defined()) b1.uniform_(-in1, in1);
  if (b2.defined()) b2.uniform_(-in2, in2);
}

torch::Tensor MoELayerImpl::forward(const torch::Tensor& x) {
  scheduler::StepInputs in;
  in.x = x;
  in.gate_weight = gate->weight;
  if (options.router_bias()) in.gate_bias = gate->bias;
  in.expert_bias = expert_bias;
  in.experts = {w1, w2, w3, b1, b2, options.activation()};
  if (!custom_experts_.empty())
    in.custom_expert = [this](int64_t e, const at::Tensor& rows) {
      return custom_experts_[e - first_expert()].forward<torch::Tensor>(rows);
    };
  in.comm = ep_group_;
  in.state = state_;
  in.schedule = schedule_;
  in.training = is_training();
  scheduler::StepResult r = scheduler::MoEForward(options, in);
  aux_loss = r.aux_loss;  // a recomputation's too: a checkpointed function may return it
  if (!r.stats.recomputed) FillStats(r);
  return Residual(x, r.y);
}

void MoELayerImpl::FillStats(const scheduler::StepResult& r) {
  static_cast<monitor::StepStats&>(stats_) = r.stats;
  stats_.counts = r.counts;
  stats_.routed_counts = r.routed_counts;
}

torch::Tensor MoELayerImpl::Residual(const torch::Tensor& x, const torch::Tensor& y) {
  if (!options.use_residual()) return y;
  // DeepSpeed residual MoE: a dense MLP mixed in by a learned 2-way softmax.
  const torch::Tensor coef = torch::softmax(residual_coef->forward(x), -1);
  torch::Tensor hidden = residual_fc1->forward(x);
  hidden = options.activation() == "relu" ? torch::relu(hidden)
           : options.activation() == "silu" ? torch::silu(hidden)
                                            : torch::gelu(hidden);
  const torch::Tensor mlp = residual_fc2->forward(hidden);
  return y * coef.narrow(-1, 0, 1) + mlp * coef.narrow(-1, 1, 1);
}

}  // namespace dynamoe
