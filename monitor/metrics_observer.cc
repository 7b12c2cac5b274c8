#include "monitor/metrics_observer.h"

#include "common/log.h"
#include "common/status.h"
#include "monitor/metrics_report.h"

namespace dynamoe::monitor {

void MetricsObserver::OnStep(const StepStats& stats) {
  if (!stats.training) return;  // the metrics count training steps, like the step counter
  std::lock_guard<std::mutex> lock(mu_);
  if (!registry_) {
    auto registry = std::make_shared<MetricsRegistry>(stats.rank, options_);
    server_ = ValueOrThrow(MetricsServer::Start(addr_, port_, registry));
    registry_ = registry;
    DYNAMOE_LOG(kInfo) << "metrics at http://" << addr_ << ":" << port_ << "/metrics";
  }
  registry_->RecordStep(MetricsReportOf(stats));
}

}  // namespace dynamoe::monitor
