// dynamoe::MoELayer: a drop-in MoE replacement for an MLP in LibTorch.
//
//   dynamoe::MoELayer moe(dynamoe::MoEOptions(512, 2048, 8).top_k(2));
//   torch::Tensor y = moe->forward(x);      // x: [..., 512] -> y: [..., 512]
//   torch::Tensor loss = task_loss + moe->aux_loss;
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "scheduler/options.h"

namespace dynamoe {

struct MoEStats {
  torch::Tensor counts;         // [world, num_experts] int64: rows each expert computed
  torch::Tensor routed_counts;  // [num_experts] int64: assignments before capacity
  int64_t dropped = 0;          // assignments dropped by capacity
  int64_t capacity = -1;        // per expert; -1 when dropless
  std::map<std::string, double> phase_seconds;  // gate, dispatch, experts, combine
};

// Makes expert `expert_idx` of a custom-expert layer ([rows, d_model] -> same).
using ExpertFactory = std::function<torch::nn::AnyModule(int64_t expert_idx)>;

class MoELayerImpl : public torch::nn::Module {
 public:
  explicit MoELayerImpl(MoEOptions options);
  // Custom experts: a slower path that calls each expert module on its rows.
  MoELayerImpl(MoEOptions options, const ExpertFactory& expert_factory);

  torch::Tensor forward(const torch::Tensor& x);
  void reset_parameters();
  const MoEStats& stats() const { return stats_; }

  MoEOptions options;
  torch::nn::Linear gate{nullptr};  // gate.weight [num_experts, d_model]
  torch::Tensor w1, w2, w3, b1, b2;  // [E, d_model, d_hidden], [E, d_hidden, d_model], ...
  torch::Tensor expert_bias;         // buffer [E]: aux-loss-free selection bias
  torch::nn::ModuleList experts{nullptr};  // custom experts only
  torch::nn::Linear residual_fc1{nullptr}, residual_fc2{nullptr}, residual_coef{nullptr};
  torch::Tensor aux_loss;  // last forward's auxiliary loss, in the graph

 private:
  void Build(const ExpertFactory* expert_factory);
  std::vector<torch::nn::AnyModule> custom_experts_;
  MoEStats stats_;
  int64_t step_ = 0;
};
TORCH_MODULE(MoELayer);

}  // namespace dynamoe
