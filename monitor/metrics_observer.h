// DYNAMOE_METRICS_PORT: adds every training step to a metrics registry and
// serves it over HTTP. The exposer starts with the first step, which names
// the rank that labels the series. Built with prometheus-cpp only.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "monitor/metrics.h"
#include "monitor/metrics_server.h"
#include "monitor/step_observer.h"

namespace dynamoe::monitor {

class MetricsObserver : public StepObserver {
 public:
  MetricsObserver(std::string addr, int port, MetricsOptions options)
      : addr_(std::move(addr)), port_(port), options_(options) {}
  // Throws dynamoe::Error naming the address and port when they cannot be bound.
  void OnStep(const StepStats& stats) override;

 private:
  const std::string addr_;
  const int port_;
  const MetricsOptions options_;
  std::mutex mu_;
  std::shared_ptr<MetricsRegistry> registry_;
  std::unique_ptr<MetricsServer> server_;
};

}  // namespace dynamoe::monitor
