// A minimal HTTP endpoint serving GET and HEAD /metrics in Prometheus' text
// format. Why not prometheus-cpp's Exposer: its civetweb server starts its
// threads with a fixed 100 KiB stack, which a LibTorch process's static TLS
// can exceed (pthread_create fails with EINVAL; seen in dynamoe-demo).
//
// One default-sized thread serves every connection through poll() with
// non-blocking sockets, so a silent or slow client never delays another:
// each connection has one deadline for its whole request and response, at
// most `max_connections` are open (more are answered 503 and closed at
// once), and Stop() closes whatever is open without waiting on a client.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace prometheus {
class Collectable;
}

namespace dynamoe::monitor {

struct MetricsServerOptions {
  // From accept to the last byte of the response; a client still sending
  // its request (or not reading the answer) then is disconnected.
  std::chrono::milliseconds request_deadline{5000};
  int max_connections = 16;
};

class MetricsServer {
 public:
  // Binds addr:port (port 0 picks a free one) and serves `collectable`. A port
  // that cannot be bound is an error naming it and the system's reason.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& addr, int port,
                                                              std::shared_ptr<prometheus::Collectable> collectable,
                                                              MetricsServerOptions options = {});
  ~MetricsServer();  // Stop()
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  int port() const { return port_; }
  // Closes the listener and every connection and joins the thread; never
  // waits on a client. Idempotent.
  void Stop();

 private:
  MetricsServer(int fd, int wake_read, int wake_write, int port, std::shared_ptr<prometheus::Collectable> collectable,
                MetricsServerOptions options);
  void Run();

  const int fd_;
  const int wake_read_, wake_write_;  // a byte here makes Run return
  const int port_;
  const std::shared_ptr<prometheus::Collectable> collectable_;
  const MetricsServerOptions options_;
  std::thread thread_;
};

}  // namespace dynamoe::monitor
