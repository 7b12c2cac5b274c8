// How a step moves tokens: DYNAMOE_SCHEDULE (FastMoE's
// FMOE_FASTER_SCHEDULE_ENABLE), DYNAMOE_GROUP_SIZE (FMOE_FASTER_GROUP_SIZE)
// and DYNAMOE_OVERLAP_DEGREE, or a layer's own choice.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "placement/plan.h"
#include "config/settings.h"
#include "scheduler/options.h"

namespace dynamoe::scheduler {

struct ScheduleOptions {
  using Kind = runtime::ScheduleKind;
  Kind kind = Kind::kSequential;
  int64_t group_size = 4;      // peers per pipeline stage, clamped to [1, world - 1]
  int64_t overlap_degree = 1;  // token chunks per peer group; 0 = from the cost model

  static ScheduleOptions FromSettings(const runtime::Settings& settings);
  // The environment's (runtime::GlobalSettings()).
  static ScheduleOptions FromConfig();
  // A layer's own schedule, the one place a kind name is parsed. kind: ""
  // keeps the environment's, else one of runtime::ScheduleNames(); nullopt
  // keeps the environment's group_size / overlap_degree. InvalidArgument names
  // the layer: group_size < 1, overlap_degree outside [0, 64] or an unknown kind.
  static absl::StatusOr<ScheduleOptions> Make(const std::string& layer, const std::string& kind,
                                              std::optional<int64_t> group_size,
                                              std::optional<int64_t> overlap_degree);
  bool overlap() const { return kind == Kind::kOverlap; }
  std::string Describe() const;  // "overlap(group_size=4, overlap_degree=2)"
};

// The overlap degree for this step: the options' own, or (0) the one the
// cost model (DYNAMOE_NET_BW, DYNAMOE_GPU_FLOPS, DYNAMOE_LATENCY_US) finds
// fastest for these counts, at most 16 stages in all.
int64_t ResolveOverlapDegree(const ScheduleOptions& schedule, const MoEOptions& options,
                             const at::Tensor& kept_matrix, const placement::Plan& plan, int64_t bytes_per_element);

}  // namespace dynamoe::scheduler
