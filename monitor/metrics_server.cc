#include "monitor/metrics_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "monitor/metrics_http.h"

namespace dynamoe::monitor {
namespace {

using Clock = std::chrono::steady_clock;

struct Connection {
  int fd;
  Clock::time_point deadline;
  std::string in;      // request bytes so far
  std::string out;     // the response, once the request is complete
  size_t sent = 0;
  bool draining = false;  // response sent, write side shut: reading to EOF so close() sends no RST
};

// Sends what the socket takes now; false on an error (the client is gone).
bool SendSome(Connection& c) {
  while (c.sent < c.out.size()) {
    const ssize_t n = send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
  }
  return true;
}

// Reads what has arrived; false on EOF or an error.
bool RecvSome(Connection& c) {
  char buf[4096];
  while (true) {
    const ssize_t n = recv(c.fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      if (!c.draining) c.in.append(buf, static_cast<size_t>(n));
      if (c.in.size() > kMaxRequestHead + sizeof(buf)) return true;  // enough to answer 431
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& addr, int port, std::shared_ptr<prometheus::Collectable> collectable,
    MetricsServerOptions options) {
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
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return fail("socket", -1);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // rebind after a restart; a listener still wins
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return fail("bind", fd);
  if (listen(fd, 64) != 0) return fail("listen", fd);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int wake[2];
  if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) return fail("pipe", fd);
  options.max_connections = std::max(1, options.max_connections);
  return std::unique_ptr<MetricsServer>(
      new MetricsServer(fd, wake[0], wake[1], ntohs(a.sin_port), std::move(collectable), options));
}

MetricsServer::MetricsServer(int fd, int wake_read, int wake_write, int port,
                             std::shared_ptr<prometheus::Collectable> collectable, MetricsServerOptions options)
    : fd_(fd),
      wake_read_(wake_read),
      wake_write_(wake_write),
      port_(port),
      collectable_(std::move(collectable)),
      options_(options),
      thread_([this] { Run(); }) {}

MetricsServer::~MetricsServer() { Stop(); }

void MetricsServer::Stop() {
  if (!thread_.joinable()) return;
  const char byte = 0;
  while (write(wake_write_, &byte, 1) < 0 && errno == EINTR) {
  }
  thread_.join();
  close(fd_);
  close(wake_read_);
  close(wake_write_);
}

void MetricsServer::Run() {
  std::vector<Connection> conns;
  const auto serialize = [this] { return prometheus::TextSerializer().Serialize(collectable_->Collect()); };
  Clock::time_point accept_paused_until{};  // out of descriptors: retry accept() later, do not spin
  while (true) {
    const Clock::time_point now = Clock::now();
    std::vector<pollfd> fds = {{wake_read_, POLLIN, 0}};
    const bool accepting = now >= accept_paused_until;
    if (accepting) fds.push_back({fd_, POLLIN, 0});
    const size_t first_conn = fds.size();
    Clock::time_point wake_at = accepting ? Clock::time_point::max() : accept_paused_until;
    for (const Connection& c : conns) {
      const bool writing = !c.draining && c.sent < c.out.size();
      fds.push_back({c.fd, static_cast<short>(writing ? POLLOUT : POLLIN), 0});
      wake_at = std::min(wake_at, c.deadline);
    }
    int timeout_ms = -1;
    if (wake_at != Clock::time_point::max())
      timeout_ms = static_cast<int>(std::max<int64_t>(
          0, std::chrono::ceil<std::chrono::milliseconds>(wake_at - now).count()));
    if (poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR) continue;
    if (fds[0].revents != 0) break;  // Stop()

    std::vector<bool> closing(conns.size(), false);
    for (size_t i = 0; i < conns.size(); ++i) {
      Connection& c = conns[i];
      const short ev = fds[first_conn + i].revents;
      if (ev == 0) continue;
      if (c.draining || c.out.empty()) {
        const bool open = RecvSome(c);
        if (c.draining) {
          closing[i] = !open;
          continue;
        }
        if (std::optional<std::string> r = HttpRespond(c.in, serialize)) {
          c.out = *std::move(r);
          c.in.clear();
        } else if (!open) {
          closing[i] = true;  // the client left before finishing its request
          continue;
        }
      }
      if (!c.out.empty() && !c.draining) {
        if (!SendSome(c)) {
          closing[i] = true;
        } else if (c.sent == c.out.size()) {
          shutdown(c.fd, SHUT_WR);
          c.draining = true;
        }
      }
    }
    const Clock::time_point after = Clock::now();
    for (size_t i = 0; i < conns.size(); ++i)
      if (closing[i] || after >= conns[i].deadline) {
        close(conns[i].fd);
        conns[i].fd = -1;
      }
    conns.erase(std::remove_if(conns.begin(), conns.end(), [](const Connection& c) { return c.fd < 0; }),
                conns.end());

    if (accepting && fds[1].revents != 0) {
      while (true) {
        const int client = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (client < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          if (errno != EAGAIN && errno != EWOULDBLOCK) accept_paused_until = after + std::chrono::milliseconds(100);
          break;
        }
        if (static_cast<int>(conns.size()) >= options_.max_connections) {
          static const char kBusy[] =
              "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
          (void)!send(client, kBusy, sizeof(kBusy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
          close(client);
          continue;
        }
        conns.push_back({client, after + options_.request_deadline, {}, {}, 0, false});
      }
    }
  }
  for (const Connection& c : conns) close(c.fd);
}

}  // namespace dynamoe::monitor
