// What the metrics registry records per layer and step, derived from the
// step's StepStats (kept apart from metrics.h: no prometheus-cpp here).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "monitor/phases.h"
#include "monitor/step_stats.h"

namespace dynamoe::monitor {

// Experts with no tokens in this many of the layer's latest steps are dead.
constexpr int64_t kDeadExpertWindow = 100;

struct StepReport {
  std::string layer;
  std::vector<int64_t> routed;        // [E] assignments this rank routed to each expert (before capacity)
  std::vector<int64_t> expert_loads;  // [E] rows each expert received from all ranks (the count matrix's columns)
  int64_t dropped = 0;                // this rank's dropped assignments
  int64_t copied_experts = 0;         // experts shadowed or replicated by the plan
  uint64_t plan_hash = 0;
  int64_t bytes_sent = 0, bytes_received = 0;  // token all-to-all, this rank
  PhaseTimes times;
  double step_seconds = 0;
  // The cost model's rates in use (kind, value): the configured ones, or
  // DYNAMOE_CALIBRATE=online's fit; and the fit's median relative error of
  // the predicted forward (-1: not calibrating, or no prediction yet).
  std::vector<std::pair<std::string, double>> cost_model_rates;
  double cost_model_error = -1;
};

// The report of one step.
StepReport MetricsReportOf(const StepStats& stats);

}  // namespace dynamoe::monitor
