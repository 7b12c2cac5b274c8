#include "config/step_observers.h"

#include <mutex>

#include "common/status.h"
#include "monitor/trace_recorder.h"
#include "config/launch_env.h"
#include "config/settings.h"

#ifdef DYNAMOE_HAVE_PROMETHEUS
#include "monitor/metrics_observer.h"
#endif

namespace dynamoe::runtime {

int64_t MonitoringRank(std::optional<int64_t> group_global_rank) {
  return group_global_rank.value_or(GlobalLaunchEnv().RankOrZero());
}

namespace {

#ifndef DYNAMOE_HAVE_PROMETHEUS
// DYNAMOE_METRICS_PORT in a build without prometheus-cpp: an error at the
// first training step, the steps the metrics would count.
class NoMetrics : public monitor::StepObserver {
 public:
  void OnStep(const monitor::StepStats& stats) override {
    if (!stats.training) return;
    throw Error(absl::UnimplementedError(
        "DYNAMOE_METRICS_PORT is set but this build has no prometheus-cpp (install prometheus-cpp-dev and rebuild)"));
  }
};
#endif

std::shared_ptr<monitor::StepObserver> MetricsFrom(const Settings& settings) {
  const int port = static_cast<int>(settings.metrics_port);
  if (port == 0) return nullptr;
#ifndef DYNAMOE_HAVE_PROMETHEUS
  return std::make_shared<NoMetrics>();
#else
  monitor::MetricsOptions options;
  options.per_expert = settings.metrics_per_expert;
  const int local_rank = GlobalLaunchEnv().local_rank.value_or(0);
  return std::make_shared<monitor::MetricsObserver>(settings.metrics_addr, port + local_rank, options);
#endif
}

std::unique_ptr<monitor::StepObservers> Configured() {
  const Settings& settings = GlobalSettings();
  auto observers = std::make_unique<monitor::StepObservers>();
  if (!settings.trace.empty())
    observers->Add(std::make_shared<monitor::TraceObserver>(settings.trace, settings.trace_flush_s));
  observers->Add(MetricsFrom(settings));
  return observers;
}

}  // namespace

monitor::StepObservers& ProcessStepObservers() {
  static std::mutex mu;
  static std::unique_ptr<monitor::StepObservers> observers;  // destroyed at exit, closing the trace
  std::lock_guard<std::mutex> lock(mu);
  // A throw (a bad setting) leaves it unset: the next step reports it again.
  if (!observers) observers = Configured();
  return *observers;
}

void AddStepObserver(std::shared_ptr<monitor::StepObserver> observer) {
  ProcessStepObservers().Add(std::move(observer));
}

}  // namespace dynamoe::runtime
