// DYNAMOE_METRICS_PORT: the process's metrics registry and its HTTP exposer
// on port + LOCAL_RANK (torchrun's), bound to DYNAMOE_METRICS_ADDR.
#pragma once

#include <cstdint>

namespace dynamoe::monitor {
struct StepReport;
}

namespace dynamoe::runtime {

// True when DYNAMOE_METRICS_PORT is set (non-zero).
bool MetricsEnabled();
// Adds one layer step to the process's metrics, starting the exposer on
// first use. Throws dynamoe::Error naming the port when it cannot be bound,
// or when this build has no prometheus-cpp.
void RecordMetrics(const monitor::StepReport& report, int64_t rank);

}  // namespace dynamoe::runtime
