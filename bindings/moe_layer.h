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
#include <optional>
#include <string>
#include <vector>

#include "monitor/step_stats.h"
#include "runtime/communicator.h"
#include "scheduler/layer.h"
#include "scheduler/moe_step.h"
#include "scheduler/options.h"
#include "scheduler/schedule.h"

namespace dynamoe {

// The last step's outcome (monitor::StepStats: dropped, capacity,
// phase_seconds(), bytes, plan, shadowed(), replicas(), plan_hash(), schedule,
// cost model, ...) with its count tensors.
struct MoEStats : monitor::StepStats {
  torch::Tensor counts;         // [ep_size, num_experts] int64: rows each rank sent to each expert
  torch::Tensor routed_counts;  // [num_experts] int64: this rank's assignments before capacity
};

// Makes expert `expert_idx` of a custom-expert layer ([rows, d_model] -> same).
using ExpertFactory = std::function<torch::nn::AnyModule(int64_t expert_idx)>;

// Expert parallelism: pass the EP group (runtime::InitFromEnv(ep_size)->ep).
// Rank r of the group then holds experts [r * E_local, (r + 1) * E_local),
// E_local = num_experts / ep_size, and w1..b2 hold only those ([E_local, ...]).
class MoELayerImpl : public torch::nn::Module {
 public:
  explicit MoELayerImpl(MoEOptions options, runtime::CommunicatorPtr ep_group = {});
  // Custom experts: a slower path that calls each expert module on its rows;
  // the factory is called for this rank's experts only (global indices).
  MoELayerImpl(MoEOptions options, const ExpertFactory& expert_factory, runtime::CommunicatorPtr ep_group = {});

  torch::Tensor forward(const torch::Tensor& x);
  void reset_parameters();
  const MoEStats& stats() const { return stats_; }
  int64_t num_local_experts() const;
  int64_t first_expert() const;  // global index of local expert 0
  const runtime::CommunicatorPtr& ep_group() const { return layer_->comm(); }
  // The placement policy in force (DYNAMOE_PLACEMENT unless set_placement chose one).
  const std::string& placement() const { return layer_->state()->placement().policy_name(); }
  // Overrides DYNAMOE_PLACEMENT for this layer: none, fastermoe, adaptive, eplb.
  void set_placement(const std::string& policy);
  // Overrides DYNAMOE_SCHEDULE / DYNAMOE_GROUP_SIZE / DYNAMOE_OVERLAP_DEGREE
  // for this layer: kind sequential or overlap ("" keeps the environment's);
  // a negative group_size or overlap_degree keeps the environment's.
  void set_schedule(const std::string& kind, int64_t group_size = -1, int64_t overlap_degree = -1);
  // "sequential" or "overlap(group_size=4, overlap_degree=2)".
  std::string schedule() const;
  // Training forwards so far (recomputations by activation checkpointing not counted).
  int64_t step() const { return layer_->state()->step(); }
  // The runtime the parameters are handed to each call (options, state, group, schedule).
  const scheduler::Layer& runtime() const { return *layer_; }

  MoEOptions options;  // as given (named); the runtime keeps its own copy, so set them before construction
  torch::nn::Linear gate{nullptr};  // gate.weight [num_experts, d_model]
  torch::Tensor w1, w2, w3, b1, b2;  // [E, d_model, d_hidden], [E, d_hidden, d_model], ...
  torch::Tensor expert_bias;         // buffer [E]: aux-loss-free selection bias
  torch::nn::ModuleList experts{nullptr};  // custom experts only (this rank's)
  torch::nn::Linear residual_fc1{nullptr}, residual_fc2{nullptr}, residual_coef{nullptr};
  torch::Tensor aux_loss;  // last forward's auxiliary loss, in the graph

 private:
  void Build(const ExpertFactory* expert_factory, runtime::CommunicatorPtr ep_group);
  scheduler::LayerTensors Tensors() const;
  c10::intrusive_ptr<scheduler::Layer> layer_;
  std::vector<torch::nn::AnyModule> custom_experts_;
  MoEStats stats_;
};
TORCH_MODULE(MoELayer);

}  // namespace dynamoe
