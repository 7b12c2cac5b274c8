// DYNAMOE_METRICS_PORT: the process's metrics registry and its HTTP exposer
// on port + LOCAL_RANK (torchrun's), bound to DYNAMOE_METRICS_ADDR.
#pragma once

#include <cstdint>
#include <optional>

namespace dynamoe::monitor {
struct StepReport;
}

namespace dynamoe::runtime {

// The rank that labels this process's metrics and names its trace file: the
// global rank of its expert-parallel group's member when it has a group, else
// the launcher's RANK (0 without a launcher), so data-parallel processes
// without a group are told apart.
int64_t MonitoringRank(std::optional<int64_t> group_global_rank);

// True when DYNAMOE_METRICS_PORT is set (non-zero).
bool MetricsEnabled();
// Adds one layer step to the process's metrics, starting the exposer on
// first use. Throws dynamoe::Error naming the port when it cannot be bound,
// or when this build has no prometheus-cpp.
void RecordMetrics(const monitor::StepReport& report, int64_t rank);

}  // namespace dynamoe::runtime
