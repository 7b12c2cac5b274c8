#include "runtime/metrics_service.h"

#include <cstdlib>
#include <memory>
#include <mutex>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "runtime/config.h"
#include "runtime/launch_env.h"

#ifdef DYNAMOE_HAVE_PROMETHEUS
#include "monitor/metrics.h"
#include "monitor/metrics_server.h"
#endif

namespace dynamoe::runtime {

int64_t MonitoringRank(std::optional<int64_t> group_global_rank) {
  return group_global_rank.value_or(GlobalLaunchEnv().RankOrZero());
}

bool MetricsEnabled() { return GlobalConfig().GetInt("DYNAMOE_METRICS_PORT") != 0; }

void RecordMetrics(const monitor::StepReport& report, int64_t rank) {
#ifndef DYNAMOE_HAVE_PROMETHEUS
  (void)report, (void)rank;
  throw Error(absl::UnimplementedError(
      "DYNAMOE_METRICS_PORT is set but this build has no prometheus-cpp (install prometheus-cpp-dev and rebuild)"));
#else
  static std::mutex mu;
  static std::shared_ptr<monitor::MetricsRegistry> registry;
  static std::unique_ptr<monitor::MetricsServer> server;
  std::lock_guard<std::mutex> lock(mu);
  if (!registry) {
    const int local_rank = GlobalLaunchEnv().local_rank.value_or(0);
    const int port = static_cast<int>(GlobalConfig().GetInt("DYNAMOE_METRICS_PORT")) + local_rank;
    monitor::MetricsOptions options;
    options.per_expert = GlobalConfig().GetBool("DYNAMOE_METRICS_PER_EXPERT");
    auto r = std::make_shared<monitor::MetricsRegistry>(rank, options);
    server = ValueOrThrow(monitor::MetricsServer::Start(GlobalConfig().Get("DYNAMOE_METRICS_ADDR"), port, r));
    registry = r;
    DYNAMOE_LOG(kInfo) << "metrics at http://" << GlobalConfig().Get("DYNAMOE_METRICS_ADDR") << ":" << port
                       << "/metrics";
  }
  registry->RecordStep(report);
#endif
}

}  // namespace dynamoe::runtime
