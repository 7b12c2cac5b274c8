// A minimal HTTP endpoint serving GET /metrics in Prometheus' text format.
// Why not prometheus-cpp's Exposer: its civetweb server starts its threads
// with a fixed 100 KiB stack, which a LibTorch process's static TLS can
// exceed (pthread_create fails with EINVAL; seen in dynamoe-demo). This one
// runs on a default-sized std::thread and serves one request at a time.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace prometheus {
class Collectable;
}

namespace dynamoe::monitor {

class MetricsServer {
 public:
  // Binds addr:port (port 0 picks a free one) and serves `collectable`. A port
  // that cannot be bound is an error naming it and the system's reason.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& addr, int port,
                                                              std::shared_ptr<prometheus::Collectable> collectable);
  ~MetricsServer();  // stops accepting and joins the thread
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  int port() const { return port_; }

 private:
  MetricsServer(int fd, int port, std::shared_ptr<prometheus::Collectable> collectable);
  void Run();
  void Serve(int client);

  const int fd_;
  const int port_;
  std::shared_ptr<prometheus::Collectable> collectable_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace dynamoe::monitor
