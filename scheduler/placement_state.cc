#include "scheduler/placement_state.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "runtime/config.h"
#include "runtime/placement_config.h"
#include "scheduler/expert_parallel.h"

namespace dynamoe::scheduler {

PlacementState::PlacementState(std::string policy)
    : name_(policy.empty() ? runtime::GlobalConfig().Get("DYNAMOE_PLACEMENT") : std::move(policy)) {
  DYNAMOE_THROW_IF(name_ != "none" && name_ != "fastermoe" && name_ != "adaptive" && name_ != "eplb",
                   "placement: unknown policy \"", name_, "\"; expected one of none, fastermoe, adaptive, eplb");
}

void PlacementState::Ensure(const MoEOptions& o, int64_t world_size, int64_t bytes_per_element) {
  const std::string key = absl::StrCat(world_size, "/", o.num_experts(), "/", o.d_model(), "/", o.d_hidden(), "/",
                                       o.gated(), "/", o.bias(), "/", bytes_per_element);
  if (policy_ && key == key_) return;
  const runtime::Config& config = runtime::GlobalConfig();
  const placement::LayerSpec layer{o.d_model(), o.d_hidden(), o.gated(), o.bias(), bytes_per_element};
  policy_ = ValueOrThrow(placement::MakePolicy(name_, runtime::ClusterFromConfig(config, world_size), layer,
                                               runtime::PolicyOptionsFromConfig(config, o.name())));
  key_ = key;
}

const placement::Plan& PlacementState::Next(const MoEOptions& o, const at::Tensor& kept, int64_t bytes) {
  Ensure(o, kept.size(0), bytes);
  plan_ = ValueOrThrow(policy_->Step(ToCountMatrix(kept)));
  OverridePlanForTesting(o.name(), kept, plan_);  // tests' hand-made quotas; nothing otherwise
  return plan_;
}

const placement::Plan& PlacementState::UseNone(const MoEOptions& o, const at::Tensor& kept, int64_t bytes) {
  Ensure(o, kept.size(0), bytes);
  const placement::CountMatrix counts = ToCountMatrix(kept);
  plan_ = placement::Plan::None(counts.world_size, counts.num_experts);
  plan_.predicted_step_seconds = policy_->model().Predict(counts, plan_).total;
  return plan_;
}

}  // namespace dynamoe::scheduler
