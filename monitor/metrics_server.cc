#include "monitor/metrics_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace dynamoe::monitor {

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& addr, int port, std::shared_ptr<prometheus::Collectable> collectable) {
  const std::string where = absl::StrCat(addr, ":", port);
  const auto fail = [&](const char* what, int fd) {
    const int err = errno;
    if (fd >= 0) close(fd);
    return absl::UnavailableError(absl::StrCat(
        "metrics: cannot serve http://", where, "/metrics (", what, ": ", std::strerror(err),
        "); pick another DYNAMOE_METRICS_PORT (each process takes port + its local rank) or set it to 0"));
  };
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (port < 0 || port > 65535 || inet_pton(AF_INET, addr.c_str(), &a.sin_addr) != 1)
    return absl::InvalidArgumentError(
        absl::StrCat("metrics: expected an IPv4 address and a port in [0, 65535], got ", where));
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail("socket", -1);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // rebind after a restart; a listener still wins
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return fail("bind", fd);
  if (listen(fd, 16) != 0) return fail("listen", fd);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return std::unique_ptr<MetricsServer>(new MetricsServer(fd, ntohs(a.sin_port), std::move(collectable)));
}

MetricsServer::MetricsServer(int fd, int port, std::shared_ptr<prometheus::Collectable> collectable)
    : fd_(fd), port_(port), collectable_(std::move(collectable)), thread_([this] { Run(); }) {}

MetricsServer::~MetricsServer() {
  stopping_ = true;
  shutdown(fd_, SHUT_RDWR);  // wakes accept()
  if (thread_.joinable()) thread_.join();
  close(fd_);
}

void MetricsServer::Run() {
  while (!stopping_) {
    const int client = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) {
      if (stopping_) return;
      if (errno == EINTR || errno == ECONNABORTED) continue;
      usleep(10000);  // e.g. out of descriptors: back off, keep serving
      continue;
    }
    Serve(client);
    close(client);
  }
}

void MetricsServer::Serve(int client) {
  timeval timeout{2, 0};  // a silent client does not block the next scrape for long
  setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  std::string request;
  char buf[1024];
  while (request.find("\r\n\r\n") == std::string::npos && request.size() < 16384) {
    const ssize_t n = recv(client, buf, sizeof(buf), 0);
    if (n <= 0) break;
    request.append(buf, static_cast<size_t>(n));
  }
  std::string status = "404 Not Found", type = "text/plain", body = "dynamoe serves GET /metrics\n";
  if (absl::StartsWith(request, "GET /metrics ") || absl::StartsWith(request, "GET /metrics?")) {
    status = "200 OK";
    type = "text/plain; version=0.0.4; charset=utf-8";
    body = prometheus::TextSerializer().Serialize(collectable_->Collect());
  }
  const std::string response = absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                                            "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
  for (size_t sent = 0; sent < response.size();) {
    const ssize_t n = send(client, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

}  // namespace dynamoe::monitor
