// Expert-load metrics for Prometheus. The step reports one StepReport per
// layer; RecordStep only adds into preallocated per-layer arrays (a short
// lock, O(experts)); the metric families are built when Prometheus scrapes
// (Collect). Names follow Prometheus conventions and are a stable interface
// (README "Metrics").
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <prometheus/collectable.h>

#include "absl/status/statusor.h"
#include "monitor/metrics_report.h"

namespace dynamoe::monitor {

class MetricsRegistry : public prometheus::Collectable {
 public:
  explicit MetricsRegistry(int64_t rank) : rank_(rank) {}
  void RecordStep(const StepReport& report);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  struct Histogram {
    std::vector<uint64_t> buckets;  // per upper bound, not cumulative
    uint64_t count = 0;
    double sum = 0;
    void Observe(double v);
  };
  struct Layer {
    std::vector<uint64_t> tokens;       // [E] counter
    std::vector<int64_t> last_seen;     // [E] step index with tokens, -1 never
    int64_t steps = 0;
    uint64_t dropped = 0, plan_changes = 0, bytes_sent = 0, bytes_received = 0;
    double imbalance = 0;
    int64_t copied = 0;
    uint64_t plan_hash = 0;
    std::array<Histogram, kNumPhases> phases;
    Histogram step;
  };
  const int64_t rank_;
  mutable std::mutex mu_;
  std::map<std::string, Layer> layers_;
};

// The bucket upper bounds (seconds) of the duration histograms.
const std::vector<double>& DurationBuckets();

}  // namespace dynamoe::monitor
