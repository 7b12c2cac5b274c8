#include "scheduler/layer_state.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/Generator.h>
#include <torch/csrc/autograd/graph_task.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dynamoe::scheduler {
namespace {

// One draw from torch's default CPU generator, the one checkpointing saves
// and restores whatever the device.
uint64_t DrawForwardId() {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  uint64_t id = at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
  return id == 0 ? 1 : id;  // 0 means "no id"
}

}  // namespace

std::string NextDefaultLayerName() {
  static std::atomic<int64_t> next{0};
  return absl::StrCat("moe", next.fetch_add(1));
}

bool InBackwardPass() { return torch::autograd::get_current_graph_task_exec_info() != nullptr; }

LayerState::LayerState(const std::string& policy) : placement_(c10::make_intrusive<PlacementState>(policy)) {}

absl::StatusOr<LayerState::Begun> LayerState::Begin(bool training, const std::string& layer) {
  Begun b;
  if (!training) return b;
  b.id = DrawForwardId();
  if (!InBackwardPass()) return b;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = records_.rbegin(); it != records_.rend(); ++it)
    if ((*it)->id == b.id) {
      b.original = *it;
      return b;
    }
  return absl::FailedPreconditionError(absl::StrCat(
      "layer '", layer, "': a training forward ran inside a backward pass (an activation-checkpointing "
      "recomputation) but matches none of the layer's last ", records_.size(), " training forwards; ",
      "dynamoe recognises a recomputation by torch's CPU random generator, which the checkpoint must restore: "
      "use torch.utils.checkpoint with preserve_rng_state=True (its default), and keep at most ",
      kMaxRecords, " forwards of one layer waiting for their backward"));
}

void LayerState::Commit(uint64_t id, int64_t step, at::Tensor expert_bias, double bias_update_rate,
                        const at::Tensor& kept_matrix, const at::Tensor& routed_matrix, const placement::Plan& plan) {
  auto record = std::make_shared<ForwardRecord>();
  record->id = id;
  record->step = step;
  record->kept_matrix = kept_matrix;
  record->routed_matrix = routed_matrix;
  record->plan = plan;
  const bool updates_bias = bias_update_rate > 0 && expert_bias.defined();
  if (updates_bias) record->expert_bias = expert_bias.detach().clone();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (records_.size() == kMaxRecords) records_.pop_front();
    records_.push_back(std::move(record));
    ++step_;
  }
  // Global loads, so the bias stays identical on every rank.
  if (updates_bias) UpdateExpertBias(expert_bias, routed_matrix, bias_update_rate);
}

void UpdateExpertBias(at::Tensor& expert_bias, const at::Tensor& counts, double rate) {
  if (rate <= 0 || !expert_bias.defined()) return;
  at::NoGradGuard no_grad;
  const at::Tensor load =
      counts.reshape({-1, expert_bias.size(0)}).sum(0).to(expert_bias.device(), expert_bias.scalar_type());
  expert_bias.add_(at::sign(load.mean() - load) * rate);
}

int64_t LayerState::step() const {
  std::lock_guard<std::mutex> lock(mu_);
  return step_;
}

void LayerState::set_step(int64_t step) {
  std::lock_guard<std::mutex> lock(mu_);
  step_ = step;
}

void LayerState::set_placement(const std::string& policy) {
  placement_ = c10::make_intrusive<PlacementState>(policy);
}

}  // namespace dynamoe::scheduler
