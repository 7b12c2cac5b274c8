#include "scheduler/schedule.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "placement/cost_model.h"
#include "config/placement_config.h"
#include "scheduler/expert_parallel.h"
#include "scheduler/pipeline_layout.h"

namespace dynamoe::scheduler {

ScheduleOptions ScheduleOptions::FromSettings(const runtime::Settings& settings) {
  ScheduleOptions s;
  s.kind = settings.schedule;
  s.group_size = settings.group_size;
  s.overlap_degree = settings.overlap_degree;
  return s;
}

ScheduleOptions ScheduleOptions::FromConfig() { return FromSettings(runtime::GlobalSettings()); }

absl::StatusOr<ScheduleOptions> ScheduleOptions::Make(const std::string& layer, const std::string& kind,
                                                      std::optional<int64_t> group_size,
                                                      std::optional<int64_t> overlap_degree) {
  DYNAMOE_CHECK_ARG(!group_size || *group_size >= 1, layer, ": group_size must be >= 1, got ", *group_size);
  DYNAMOE_CHECK_ARG(!overlap_degree || (*overlap_degree >= 0 && *overlap_degree <= 64), layer,
                    ": overlap_degree must be in [0, 64] (0: from the cost model), got ", *overlap_degree);
  ScheduleOptions s = FromConfig();
  if (!kind.empty()) {
    const absl::StatusOr<Kind> parsed = runtime::ParseSchedule(kind);
    DYNAMOE_CHECK_ARG(parsed.ok(), layer, ": ", parsed.status().message());
    s.kind = *parsed;
  }
  if (group_size) s.group_size = *group_size;
  if (overlap_degree) s.overlap_degree = *overlap_degree;
  return s;
}

std::string ScheduleOptions::Describe() const {
  if (!overlap()) return "sequential";
  return absl::StrCat("overlap(group_size=", group_size, ", overlap_degree=",
                      overlap_degree == 0 ? std::string("auto") : std::to_string(overlap_degree), ")");
}

int64_t ResolveOverlapDegree(const ScheduleOptions& schedule, const MoEOptions& o, const at::Tensor& kept,
                             const placement::Plan& plan, int64_t bytes_per_element) {
  if (schedule.overlap_degree > 0) return schedule.overlap_degree;
  const int64_t P = kept.size(0);
  const placement::CountMatrix counts = ToCountMatrix(kept);
  const placement::ClusterSpec cluster = runtime::ClusterFromSettings(runtime::GlobalSettings(), P);
  const placement::CostModel model(cluster, {o.d_model(), o.d_hidden(), o.gated(), o.bias(), bytes_per_element},
                                   {/*training=*/false, /*overlap=*/true});
  const placement::StepCost cost = model.Predict(counts, plan);
  constexpr int64_t kMaxStages = 16;
  const int64_t groups = std::max<int64_t>(1, PeerGroups(schedule.group_size, P));
  const double overhead = 2 * cluster.inter_node_latency_s;
  const int64_t stages = placement::BestStageCount(cost.all_to_all, cost.compute, overhead, kMaxStages);
  return std::max<int64_t>(1, stages / groups);
}

}  // namespace dynamoe::scheduler
