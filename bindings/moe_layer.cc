#include "bindings/moe_layer.h"

#include <torch/nn/init.h>

#include <cmath>

#include "common/status.h"

namespace dynamoe {

MoELayerImpl::MoELayerImpl(MoEOptions options_, runtime::CommunicatorPtr ep_group) : options(std::move(options_)) {
  Build(nullptr, std::move(ep_group));
}

MoELayerImpl::MoELayerImpl(MoEOptions options_, const ExpertFactory& expert_factory,
                           runtime::CommunicatorPtr ep_group)
    : options(std::move(options_)) {
  DYNAMOE_THROW_IF(!expert_factory, options.name(), ": expert_factory is empty");
  Build(&expert_factory, std::move(ep_group));
}

void MoELayerImpl::Build(const ExpertFactory* expert_factory, runtime::CommunicatorPtr ep_group) {
  layer_ = c10::make_intrusive<scheduler::Layer>(options, std::move(ep_group), nullptr, expert_factory != nullptr);
  options = layer_->options();  // named
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

void MoELayerImpl::set_placement(const std::string& policy) { layer_->set_placement(policy); }

void MoELayerImpl::set_schedule(const std::string& kind, int64_t group_size, int64_t overlap_degree) {
  // The module's API: negatives keep the environment's.
  layer_->set_schedule(kind, group_size < 0 ? std::nullopt : std::optional<int64_t>(group_size),
                       overlap_degree < 0 ? std::nullopt : std::optional<int64_t>(overlap_degree));
}

std::string MoELayerImpl::schedule() const { return layer_->schedule().Describe(); }

int64_t MoELayerImpl::num_local_experts() const { return layer_->num_local_experts(); }

int64_t MoELayerImpl::first_expert() const { return layer_->first_expert(); }

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

scheduler::LayerTensors MoELayerImpl::Tensors() const {
  scheduler::LayerTensors t;
  t.gate_weight = gate->weight;
  const MoEOptions& options = layer_->options();  // the runtime's (the member may have been edited since)
  if (options.router_bias()) t.gate_bias = gate->bias;
  t.expert_bias = expert_bias;
  t.experts = {w1, w2, w3, b1, b2, layer_->activation()};
  if (options.use_residual())
    t.residual = {residual_fc1->weight, residual_fc1->bias, residual_fc2->weight,
                  residual_fc2->bias,   residual_coef->weight, residual_coef->bias};
  return t;
}

torch::Tensor MoELayerImpl::forward(const torch::Tensor& x) {
  scheduler::CustomExpertFn custom;
  if (!custom_experts_.empty())
    custom = [this](int64_t e, const at::Tensor& rows) {
      return custom_experts_[e - first_expert()].forward<torch::Tensor>(rows);
    };
  scheduler::StepResult r = layer_->Forward(x, Tensors(), is_training(), custom);
  aux_loss = r.aux_loss;  // a recomputation's too: a checkpointed function may return it
  if (!r.stats.recomputed) {
    static_cast<monitor::StepStats&>(stats_) = r.stats;
    stats_.counts = r.counts;
    stats_.routed_counts = r.routed_counts;
  }
  return r.y;
}

}  // namespace dynamoe
