// A step's StepStats as the dict Python's MoE.stats() returns: named keys,
// never positions, so adding a figure changes no caller.
#pragma once

#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>

#include <string>

#include "monitor/step_stats.h"

namespace dynamoe {

// Keys: step, recomputed, dropped, capacity, balance_loss, z_loss (NaN when
// on a device), phase_seconds {name: s}, bytes_sent, bytes_received,
// comm_seconds, shadowed, replicas, plan_hash (the uint64's bits as int64),
// predicted_step_seconds, weight_bytes_sent, weight_bytes_received,
// overlapped, pipeline_stages, cost_model (None without a policy, else
// {calibrating, flops, intra/inter_node_bytes_per_second,
// intra/inter_node_latency_seconds[, fixed_seconds, error, fitted_steps]}).
c10::Dict<std::string, c10::IValue> StatsDict(const monitor::StepStats& stats);

}  // namespace dynamoe
