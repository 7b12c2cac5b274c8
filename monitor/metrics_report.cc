#include "monitor/metrics_report.h"

namespace dynamoe::monitor {

StepReport MetricsReportOf(const StepStats& s) {
  StepReport r;
  r.layer = s.layer.name;
  r.routed = s.routed_here;
  r.expert_loads = s.kept.ExpertLoads();
  r.dropped = s.dropped;
  for (const auto& c : s.plan.copies) r.copied_experts += c.empty() ? 0 : 1;
  r.plan_hash = s.plan.Hash();
  r.bytes_sent = s.bytes_sent, r.bytes_received = s.bytes_received;
  r.times = s.times;
  r.step_seconds = s.step_seconds();
  // Calibrating only: otherwise the rates are the configured ones (and the series count stays).
  if (s.cost_model && s.cost_model->calibrating) {
    const CostModelStats& c = *s.cost_model;
    r.cost_model_rates = {{"flops", c.flops},
                          {"intra_node_bytes_per_second", c.intra_node_bytes_per_second},
                          {"inter_node_bytes_per_second", c.inter_node_bytes_per_second},
                          {"intra_node_latency_seconds", c.intra_node_latency_seconds},
                          {"inter_node_latency_seconds", c.inter_node_latency_seconds},
                          {"fixed_seconds", c.fixed_seconds}};
    r.cost_model_error = c.error.value_or(-1);
  }
  return r;
}

}  // namespace dynamoe::monitor
