#include "scheduler/placement_state.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "config/placement_config.h"
#include "scheduler/expert_parallel.h"

namespace dynamoe::scheduler {

PlacementState::PlacementState(std::string policy)
    : kind_(policy.empty() ? runtime::GlobalSettings().placement : ValueOrThrow(placement::ParsePolicy(policy))),
      name_(placement::PolicyName(kind_)) {}

void PlacementState::Ensure(const MoEOptions& o, int64_t world_size, int64_t bytes_per_element) {
  const std::string key = absl::StrCat(world_size, "/", o.num_experts(), "/", o.d_model(), "/", o.d_hidden(), "/",
                                       o.gated(), "/", o.bias(), "/", bytes_per_element);
  if (policy_ && key == key_) return;
  const runtime::Settings& settings = runtime::GlobalSettings();
  const placement::LayerSpec layer{o.d_model(), o.d_hidden(), o.gated(), o.bias(), bytes_per_element};
  const placement::ClusterSpec cluster = runtime::ClusterFromSettings(settings, world_size);
  policy_ = ValueOrThrow(
      placement::MakePolicy(kind_, cluster, layer, runtime::PolicyOptionsFromSettings(settings, o.name())));
  key_ = key;
  // A new shape starts a new fit: the old figures were of other rows.
  fit_.reset();
  pending_.reset();
  if (settings.calibrate == runtime::CalibrateMode::kOnline)
    fit_ = std::make_unique<placement::OnlineFit>(cluster, layer);
}

std::vector<double> PlacementState::Figures() const {
  if (runtime::GlobalSettings().calibrate != runtime::CalibrateMode::kOnline) return {};
  std::vector<double> f(kFigures, 0.0);
  if (pending_ && fit_) {
    f[0] = 1;
    std::copy(pending_->times.seconds.begin(), pending_->times.seconds.end(), f.begin() + 1);
  }
  return f;
}

void PlacementState::Calibrate(const std::vector<double>& all, int64_t world_size) {
  if (!fit_ || !pending_ || static_cast<int64_t>(all.size()) != world_size * kFigures ||
      pending_->counts.world_size != world_size)
    return;
  static const std::vector<std::string> names(monitor::kPhaseNames.begin(), monitor::kPhaseNames.end());
  std::vector<std::pair<int64_t, placement::RankTimes>> measured;
  for (int64_t r = 0; r < world_size; ++r) {
    const double* f = all.data() + r * kFigures;
    if (f[0] != 1) return;  // a rank without the previous step's figures: fit nothing (all ranks alike)
    measured.emplace_back(r, placement::TimesFromPhases(names, f + 1));
  }
  fit_->Add(pending_->counts, pending_->plan, measured);
  pending_.reset();
  if (fit_->ready()) policy_->SetCluster(fit_->Cluster());
}

void PlacementState::Measured(const monitor::PhaseTimes& times) {
  if (!fit_ || counts_.world_size == 0) return;
  pending_ = std::make_unique<Pending>(Pending{counts_, plan_, times});
}

std::optional<monitor::CostModelStats> PlacementState::CostModel() const {
  if (!policy_) return std::nullopt;
  const placement::ClusterSpec& cluster = policy_->model().cluster();
  monitor::CostModelStats c;
  c.calibrating = fit_ != nullptr;
  c.flops = cluster.flops;
  c.intra_node_bytes_per_second = cluster.intra_node_bw;
  c.inter_node_bytes_per_second = cluster.inter_node_bw;
  c.intra_node_latency_seconds = cluster.intra_node_latency_s;
  c.inter_node_latency_seconds = cluster.inter_node_latency_s;
  if (fit_ && fit_->ready()) c.fixed_seconds = fit_->rates().fixed_s;
  if (fit_ && fit_->MedianError() >= 0) c.error = fit_->MedianError();
  if (fit_) c.fitted_steps = fit_->steps();
  return c;
}

const placement::Plan& PlacementState::Next(const MoEOptions& o, const at::Tensor& kept, int64_t bytes) {
  Ensure(o, kept.size(0), bytes);
  counts_ = ToCountMatrix(kept);
  plan_ = ValueOrThrow(policy_->Step(counts_));
  OverridePlanForTesting(o.name(), kept, plan_);  // tests' hand-made quotas; nothing otherwise
  return plan_;
}

const placement::Plan& PlacementState::UseNone(const MoEOptions& o, const at::Tensor& kept, int64_t bytes) {
  Ensure(o, kept.size(0), bytes);
  counts_ = ToCountMatrix(kept);
  plan_ = placement::Plan::None(counts_.world_size, counts_.num_experts);
  plan_.predicted_step_seconds = policy_->model().Predict(counts_, plan_).total;
  return plan_;
}

}  // namespace dynamoe::scheduler
