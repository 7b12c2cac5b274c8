#include "monitor/metrics.h"

#include <prometheus/client_metric.h>
#include <prometheus/metric_family.h>

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "monitor/trace_writer.h"
#include "placement/count_matrix.h"

namespace dynamoe::monitor {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

ClientMetric Labeled(std::vector<ClientMetric::Label> labels) {
  ClientMetric m;
  m.label = std::move(labels);
  return m;
}

// The indices of the `k` largest loads, largest first (ties: lower index first).
std::vector<size_t> Hottest(const std::vector<int64_t>& loads, int k) {
  std::vector<size_t> order(loads.size());
  for (size_t e = 0; e < order.size(); ++e) order[e] = e;
  const size_t n = std::min(order.size(), static_cast<size_t>(std::max(0, k)));
  std::partial_sort(order.begin(), order.begin() + n, order.end(),
                    [&](size_t a, size_t b) { return loads[a] != loads[b] ? loads[a] > loads[b] : a < b; });
  order.resize(n);
  return order;
}

}  // namespace

const std::vector<double>& DurationBuckets() {
  static const std::vector<double> b = {1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1, 3, 10};
  return b;
}

void MetricsRegistry::Histogram::Observe(double v) {
  const auto& bounds = DurationBuckets();
  if (buckets.empty()) buckets.assign(bounds.size(), 0);
  const size_t i = std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin();
  if (i < buckets.size()) ++buckets[i];
  ++count;
  sum += v;
}

void MetricsRegistry::RecordStep(const StepReport& r) {
  std::lock_guard<std::mutex> lock(mu_);
  Layer& l = layers_[r.layer];
  const size_t E = std::max(r.routed.size(), r.expert_loads.size());
  if (l.tokens.size() < E) l.tokens.resize(E, 0), l.last_seen.resize(E, -1);
  for (size_t e = 0; e < r.routed.size(); ++e) {
    l.tokens[e] += static_cast<uint64_t>(r.routed[e]);
    l.routed += static_cast<uint64_t>(r.routed[e]);
  }
  for (size_t e = 0; e < r.expert_loads.size(); ++e)
    if (r.expert_loads[e] > 0) l.last_seen[e] = l.steps;
  l.last_loads = r.expert_loads;
  l.imbalance = placement::LoadImbalance(r.expert_loads);
  l.dropped += static_cast<uint64_t>(r.dropped);
  if (l.steps > 0 && r.plan_hash != l.plan_hash) ++l.plan_changes;
  l.plan_hash = r.plan_hash;
  l.copied = r.copied_experts;
  l.bytes_sent += static_cast<uint64_t>(r.bytes_sent);
  l.bytes_received += static_cast<uint64_t>(r.bytes_received);
  for (int p = 0; p < kNumPhases; ++p)
    if (r.times.seconds[p] > 0) l.phases[p].Observe(r.times.seconds[p]);
  l.step.Observe(r.step_seconds);
  l.cost_model_rates = r.cost_model_rates;
  l.cost_model_error = r.cost_model_error;
  ++l.steps;
}

std::vector<MetricFamily> MetricsRegistry::Collect() const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string rank = std::to_string(rank_);
  auto family = [](std::string name, std::string help, MetricType type) {
    MetricFamily f;
    f.name = std::move(name), f.help = std::move(help), f.type = type;
    return f;
  };
  MetricFamily routed = family("dynamoe_routed_tokens_total",
                               "Token assignments this rank routed, all experts, before capacity.",
                               MetricType::Counter);
  MetricFamily tokens = family("dynamoe_expert_tokens_total",
                               "Token assignments routed to each expert, counted by the rank that routed them "
                               "(only with DYNAMOE_METRICS_PER_EXPERT=1).",
                               MetricType::Counter);
  MetricFamily dropped = family("dynamoe_tokens_dropped_total", "Token assignments dropped by expert capacity.",
                                MetricType::Counter);
  MetricFamily imbalance = family("dynamoe_load_imbalance_ratio",
                                  "Max over mean of the experts' loads in the last step's count matrix (1 = balanced).",
                                  MetricType::Gauge);
  MetricFamily load_max = family("dynamoe_expert_load_max",
                                 "Rows the busiest expert received from all ranks in the last step.", MetricType::Gauge);
  MetricFamily load_min = family("dynamoe_expert_load_min",
                                 "Rows the idlest expert received from all ranks in the last step.", MetricType::Gauge);
  MetricFamily hot = family("dynamoe_hot_expert",
                            "Index of the expert with the slot-th highest load in the last step (slot 0: busiest).",
                            MetricType::Gauge);
  MetricFamily hot_load = family("dynamoe_hot_expert_load",
                                 "Rows the slot-th busiest expert received from all ranks in the last step.",
                                 MetricType::Gauge);
  MetricFamily dead = family("dynamoe_dead_experts",
                             absl::StrCat("Experts that received no tokens in the layer's last ", kDeadExpertWindow,
                                          " steps (or since the start)."),
                             MetricType::Gauge);
  MetricFamily copied = family("dynamoe_copied_experts", "Experts shadowed or replicated by the current plan.",
                               MetricType::Gauge);
  MetricFamily changes = family("dynamoe_plan_changes_total", "Steps whose placement plan differs from the previous.",
                                MetricType::Counter);
  MetricFamily bytes = family("dynamoe_alltoall_bytes_total", "Token bytes moved by the all-to-all, forward.",
                              MetricType::Counter);
  MetricFamily phases = family("dynamoe_phase_duration_seconds", "Wall time of each phase of a layer's step.",
                               MetricType::Histogram);
  MetricFamily steps = family("dynamoe_step_duration_seconds", "Wall time of a layer's forward step.",
                              MetricType::Histogram);
  MetricFamily lost = family("dynamoe_trace_records_lost_total",
                             "DYNAMOE_TRACE records this process could not write (disk full, file limit, "
                             "unwritable path).",
                             MetricType::Counter);
  MetricFamily rates = family("dynamoe_cost_model_rate",
                              "The placement cost model's fitted rates, by kind: flops (expert FLOP/s per rank), "
                              "{intra,inter}_node_bytes_per_second, {intra,inter}_node_latency_seconds (per "
                              "message), fixed_seconds (per-step constant); DYNAMOE_CALIBRATE=online only.",
                              MetricType::Gauge);
  MetricFamily rate_error = family("dynamoe_cost_model_error",
                                   "DYNAMOE_CALIBRATE=online: median relative error of the predicted forward step "
                                   "time over recent steps, each predicted before it joined the fit.",
                                   MetricType::Gauge);
  auto histogram = [](const Histogram& h, ClientMetric m) {
    const auto& bounds = DurationBuckets();
    uint64_t cumulative = 0;
    for (size_t i = 0; i < bounds.size(); ++i) {
      cumulative += h.buckets.empty() ? 0 : h.buckets[i];
      m.histogram.bucket.push_back({cumulative, bounds[i]});
    }
    m.histogram.bucket.push_back({h.count, std::numeric_limits<double>::infinity()});
    m.histogram.sample_count = h.count;
    m.histogram.sample_sum = h.sum;
    return m;
  };
  auto add = [](MetricFamily& f, std::vector<ClientMetric::Label> labels, double value) {
    ClientMetric m = Labeled(std::move(labels));
    (f.type == MetricType::Counter ? m.counter.value : m.gauge.value) = value;
    f.metric.push_back(std::move(m));
  };
  for (const auto& [name, l] : layers_) {
    const std::vector<ClientMetric::Label> base = {{"layer", name}, {"rank", rank}};
    int64_t n_dead = 0;
    for (size_t e = 0; e < l.tokens.size(); ++e) {
      if (options_.per_expert)
        add(tokens, {{"expert", std::to_string(e)}, {"layer", name}, {"rank", rank}}, static_cast<double>(l.tokens[e]));
      // Dead: no tokens in the latest kDeadExpertWindow steps (steps are 0-based, so the
      // latest window is [steps - window, steps)).
      if (l.last_seen[e] < 0 || l.last_seen[e] < l.steps - kDeadExpertWindow) ++n_dead;
    }
    add(routed, base, static_cast<double>(l.routed));
    add(dropped, base, static_cast<double>(l.dropped));
    add(imbalance, base, l.imbalance);
    add(dead, base, static_cast<double>(n_dead));
    add(copied, base, static_cast<double>(l.copied));
    add(changes, base, static_cast<double>(l.plan_changes));
    if (!l.last_loads.empty()) {
      const auto [lo, hi] = std::minmax_element(l.last_loads.begin(), l.last_loads.end());
      add(load_max, base, static_cast<double>(*hi));
      add(load_min, base, static_cast<double>(*lo));
    }
    const std::vector<size_t> order = Hottest(l.last_loads, options_.hot_experts);
    for (size_t slot = 0; slot < order.size(); ++slot) {
      const std::vector<ClientMetric::Label> labels = {{"layer", name}, {"rank", rank}, {"slot", std::to_string(slot)}};
      add(hot, labels, static_cast<double>(order[slot]));
      add(hot_load, labels, static_cast<double>(l.last_loads[order[slot]]));
    }
    for (const auto& [dir, v] : {std::pair<const char*, uint64_t>{"received", l.bytes_received}, {"sent", l.bytes_sent}})
      add(bytes, {{"direction", dir}, {"layer", name}, {"rank", rank}}, static_cast<double>(v));
    for (int p = 0; p < kNumPhases; ++p)
      phases.metric.push_back(histogram(l.phases[p], Labeled({{"layer", name}, {"phase", kPhaseNames[p]}, {"rank", rank}})));
    steps.metric.push_back(histogram(l.step, Labeled(base)));
    for (const auto& [kind, v] : l.cost_model_rates) add(rates, {{"kind", kind}, {"layer", name}, {"rank", rank}}, v);
    if (l.cost_model_error >= 0) add(rate_error, base, l.cost_model_error);
  }
  add(lost, {{"rank", rank}}, static_cast<double>(ProcessTraceRecordsLost()));
  std::vector<MetricFamily> out = {routed, dropped, imbalance, load_max, load_min, hot, hot_load, dead,
                                   copied, changes,  bytes,     phases,   steps,    lost};
  for (MetricFamily* f : {&rates, &rate_error})  // DYNAMOE_CALIBRATE=online's: absent without it
    if (!f->metric.empty()) out.push_back(std::move(*f));
  if (options_.per_expert) out.insert(out.begin(), std::move(tokens));
  return out;
}

}  // namespace dynamoe::monitor
