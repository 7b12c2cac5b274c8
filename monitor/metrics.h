// Expert-load metrics for Prometheus. The step reports one StepReport per
// layer; RecordStep only adds into preallocated per-layer arrays (a short
// lock, O(experts)); the metric families are built when Prometheus scrapes
// (Collect). Names follow Prometheus conventions and are a stable interface
// (README "Metrics", which also gives the series count).
//
// Series per layer do not grow with the expert count by default: the layer's
// load is summarised (max, min, imbalance, dead experts, the hottest experts
// in `hot_experts` fixed slots). One series per expert is opt-in
// (DYNAMOE_METRICS_PER_EXPERT): 256 experts x 61 layers would be ~15,600.
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

struct MetricsOptions {
  bool per_expert = false;  // dynamoe_expert_tokens_total, one series per expert
  int hot_experts = 4;      // slots of dynamoe_hot_expert / dynamoe_hot_expert_load
};

class MetricsRegistry : public prometheus::Collectable {
 public:
  explicit MetricsRegistry(int64_t rank, MetricsOptions options = {}) : rank_(rank), options_(options) {}
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
    std::vector<int64_t> last_loads;    // [E] the last step's expert loads
    int64_t steps = 0;
    uint64_t routed = 0, dropped = 0, plan_changes = 0, bytes_sent = 0, bytes_received = 0;
    double imbalance = 0;
    int64_t copied = 0;
    uint64_t plan_hash = 0;
    std::array<Histogram, kNumPhases> phases;
    Histogram step;
    std::vector<std::pair<std::string, double>> cost_model_rates;
    double cost_model_error = -1;
  };
  const int64_t rank_;
  const MetricsOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, Layer> layers_;
};

// The bucket upper bounds (seconds) of the duration histograms.
const std::vector<double>& DurationBuckets();

}  // namespace dynamoe::monitor
