// One MoE step's outcome as plain values (no torch): what the layer's
// stats() report, what the metrics and the trace are derived from, and what
// observers (step_observer.h) receive. The step fills it once; nothing copies
// it field by field into another shape.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "monitor/phases.h"
#include "placement/count_matrix.h"
#include "placement/plan.h"
#include "placement/trace.h"

namespace dynamoe::monitor {

// The placement cost model's rates in force: the configured ones, or
// DYNAMOE_CALIBRATE=online's fit.
struct CostModelStats {
  bool calibrating = false;
  double flops = 0;
  double intra_node_bytes_per_second = 0, inter_node_bytes_per_second = 0;
  double intra_node_latency_seconds = 0, inter_node_latency_seconds = 0;
  double fixed_seconds = 0;  // fitted only
  // Median relative error of the predicted forward over recent steps, each
  // predicted before it joined the fit; unset before the first (or not calibrating).
  std::optional<double> error;
  int64_t fitted_steps = 0;
};

struct StepStats {
  placement::TraceLayerSpec layer;  // name, shape and element size
  int64_t rank = 0;  // the process's global rank for files and metrics (runtime::MonitoringRank)
  int64_t step = 0;  // the training step it ran as
  bool training = false;
  // A recomputation of an earlier forward (activation checkpointing): it
  // routed as that one did; observers never see it.
  bool recomputed = false;

  placement::CountMatrix kept;    // [ep_size, E]: rows each rank sent to each expert
  placement::CountMatrix routed;  // [ep_size, E]: each rank's assignments before capacity
  std::vector<int64_t> routed_here;  // [E]: this rank's assignments before capacity
  int64_t dropped = 0;    // this rank's assignments dropped by capacity
  int64_t capacity = -1;  // per expert; -1 dropless
  // Unweighted losses; NaN when they live on a device (reading them would
  // stall the stream before backward).
  double balance_loss = std::numeric_limits<double>::quiet_NaN();
  double z_loss = std::numeric_limits<double>::quiet_NaN();

  int64_t bytes_sent = 0, bytes_received = 0;  // token rows to / from other ranks (forward)
  double comm_seconds = 0;                     // waiting on collectives (forward)
  int64_t weight_bytes_sent = 0, weight_bytes_received = 0;  // copied experts' weights (forward)
  // The schedule that ran: overlapped, and the pipeline stages that moved rows
  // (at most peer groups x token chunks); false / 0 sequential or one process.
  bool overlapped = false;
  int64_t pipeline_stages = 0;

  placement::Plan plan;  // in force this step
  bool placed = false;   // a placement policy chose `plan` (false: a stateless step)
  std::optional<CostModelStats> cost_model;  // absent without a placement policy
  PhaseTimes times;

  // Derived views, by the names stats() gives them.
  std::map<std::string, double> phase_seconds() const;  // forward phases by name
  std::vector<int64_t> shadowed() const { return plan.Shadowed(); }
  std::vector<int64_t> replicas() const { return plan.ReplicaCounts(); }
  uint64_t plan_hash() const { return plan.Hash(); }
  double predicted_step_seconds() const { return plan.predicted_step_seconds; }
  double step_seconds() const;  // sum over every phase
};

}  // namespace dynamoe::monitor
