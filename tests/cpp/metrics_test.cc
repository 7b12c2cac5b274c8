// The metrics registry (families and values after known steps, the series
// count), the text exposition (checked by promtool where it is installed)
// and the endpoint over real sockets: its clear error on a port in use,
// HEAD/405/404, and slow, idle and excess clients.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "monitor/metrics.h"
#include "monitor/metrics_http.h"
#include "monitor/metrics_server.h"

namespace dynamoe::monitor {
namespace {

using prometheus::MetricFamily;

const MetricFamily& Family(const std::vector<MetricFamily>& fs, const std::string& name) {
  for (const auto& f : fs)
    if (f.name == name) return f;
  ADD_FAILURE() << "no family " << name;
  static MetricFamily none;
  return none;
}

std::string Label(const prometheus::ClientMetric& m, const std::string& name) {
  for (const auto& l : m.label)
    if (l.name == name) return l.value;
  return "";
}

StepReport Report(std::vector<int64_t> routed, std::vector<int64_t> loads, uint64_t hash) {
  StepReport r;
  r.layer = "moe0";
  r.routed = std::move(routed);
  r.expert_loads = std::move(loads);
  r.dropped = 2;
  r.copied_experts = 1;
  r.plan_hash = hash;
  r.bytes_sent = 100, r.bytes_received = 40;
  r.times[Phase::kGate] = 2e-4;
  r.times[Phase::kExperts] = 0.02;
  r.step_seconds = 0.05;
  return r;
}

TEST(Metrics, FamiliesHoldTheRecordedSteps) {
  MetricsRegistry reg(3, {/*per_expert=*/true, /*hot_experts=*/2});
  reg.RecordStep(Report({5, 0, 3, 0}, {9, 0, 3, 0}, 7));
  reg.RecordStep(Report({1, 0, 2, 0}, {6, 0, 0, 2}, 7));
  reg.RecordStep(Report({4, 0, 0, 0}, {12, 0, 0, 0}, 8));  // plan changed
  const auto fs = reg.Collect();
  const auto& tokens = Family(fs, "dynamoe_expert_tokens_total");
  ASSERT_EQ(tokens.metric.size(), 4u);
  std::map<std::string, double> by_expert;
  for (const auto& m : tokens.metric) {
    EXPECT_EQ(Label(m, "rank"), "3");
    EXPECT_EQ(Label(m, "layer"), "moe0");
    by_expert[Label(m, "expert")] = m.counter.value;
  }
  EXPECT_EQ(by_expert["0"], 10);
  EXPECT_EQ(by_expert["2"], 5);
  EXPECT_EQ(by_expert["1"], 0);
  EXPECT_EQ(Family(fs, "dynamoe_routed_tokens_total").metric.at(0).counter.value, 15);
  EXPECT_EQ(Family(fs, "dynamoe_tokens_dropped_total").metric.at(0).counter.value, 6);
  EXPECT_DOUBLE_EQ(Family(fs, "dynamoe_load_imbalance_ratio").metric.at(0).gauge.value, 4.0);  // 12 / mean 3
  EXPECT_EQ(Family(fs, "dynamoe_expert_load_max").metric.at(0).gauge.value, 12);
  EXPECT_EQ(Family(fs, "dynamoe_expert_load_min").metric.at(0).gauge.value, 0);
  EXPECT_EQ(Family(fs, "dynamoe_dead_experts").metric.at(0).gauge.value, 1);  // expert 1 never had tokens
  EXPECT_EQ(Family(fs, "dynamoe_plan_changes_total").metric.at(0).counter.value, 1);
  EXPECT_EQ(Family(fs, "dynamoe_copied_experts").metric.at(0).gauge.value, 1);
  const auto& bytes = Family(fs, "dynamoe_alltoall_bytes_total");
  ASSERT_EQ(bytes.metric.size(), 2u);
  for (const auto& m : bytes.metric) EXPECT_EQ(m.counter.value, Label(m, "direction") == "sent" ? 300 : 120);
  const auto& phases = Family(fs, "dynamoe_phase_duration_seconds");
  EXPECT_EQ(phases.metric.size(), static_cast<size_t>(kNumPhases));
  for (const auto& m : phases.metric) {
    const std::string p = Label(m, "phase");
    const uint64_t want = p == "gate" || p == "experts" ? 3 : 0;  // phases that took no time are not observed
    EXPECT_EQ(m.histogram.sample_count, want) << p;
    if (p == "gate") {  // 2e-4 s: none at le 1e-4, all at le 3e-4
      EXPECT_EQ(m.histogram.bucket.at(2).upper_bound, 1e-4);
      EXPECT_EQ(m.histogram.bucket.at(2).cumulative_count, 0u);
      EXPECT_EQ(m.histogram.bucket.at(3).cumulative_count, 3u);
      EXPECT_EQ(m.histogram.bucket.back().cumulative_count, 3u);  // +Inf
    }
  }
  EXPECT_DOUBLE_EQ(Family(fs, "dynamoe_step_duration_seconds").metric.at(0).histogram.sample_sum, 0.15);
}

TEST(Metrics, HotExpertSlotsFollowTheLastStep) {
  MetricsRegistry reg(0, {/*per_expert=*/false, /*hot_experts=*/3});
  reg.RecordStep(Report({1, 1, 1, 1, 1}, {9, 0, 9, 9, 9}, 0));
  reg.RecordStep(Report({1, 1, 1, 1, 1}, {2, 7, 0, 7, 1}, 0));  // ties: the lower index first
  const auto fs = reg.Collect();
  std::map<std::string, std::pair<double, double>> slots;  // slot -> (expert, load)
  for (const auto& m : Family(fs, "dynamoe_hot_expert").metric) slots[Label(m, "slot")].first = m.gauge.value;
  for (const auto& m : Family(fs, "dynamoe_hot_expert_load").metric) slots[Label(m, "slot")].second = m.gauge.value;
  const std::map<std::string, std::pair<double, double>> want = {{"0", {1, 7}}, {"1", {3, 7}}, {"2", {0, 2}}};
  EXPECT_EQ(slots, want);
  for (const auto& f : fs) EXPECT_NE(f.name, "dynamoe_expert_tokens_total") << "per-expert series are opt-in";
  // Fewer experts than slots: one slot per expert.
  MetricsRegistry small(0, {false, 8});
  small.RecordStep(Report({1, 1}, {1, 3}, 0));
  EXPECT_EQ(Family(small.Collect(), "dynamoe_hot_expert").metric.size(), 2u);
}

TEST(Metrics, DeadExpertsAgeOutOfTheWindow) {
  MetricsRegistry reg(0);
  reg.RecordStep(Report({1, 1}, {1, 1}, 0));
  for (int64_t i = 0; i + 1 < kDeadExpertWindow; ++i) reg.RecordStep(Report({1, 0}, {1, 0}, 0));
  // Expert 1 had tokens in the first of the latest 100 steps: alive.
  EXPECT_EQ(Family(reg.Collect(), "dynamoe_dead_experts").metric.at(0).gauge.value, 0);
  reg.RecordStep(Report({1, 0}, {1, 0}, 0));  // now none in the latest 100
  EXPECT_EQ(Family(reg.Collect(), "dynamoe_dead_experts").metric.at(0).gauge.value, 1);
}

// DYNAMOE_CALIBRATE=online's gauges: absent without rates, the last step's
// rates per kind and the error once reported.
TEST(Metrics, CostModelGaugesFollowTheLastCalibratedStep) {
  MetricsRegistry reg(1);
  reg.RecordStep(Report({1, 2}, {3, 4}, 5));
  for (const auto& f : reg.Collect())
    EXPECT_TRUE(f.name != "dynamoe_cost_model_rate" && f.name != "dynamoe_cost_model_error") << f.name;
  StepReport r = Report({1, 2}, {3, 4}, 5);
  r.cost_model_rates = {{"flops", 2e10}, {"fixed_seconds", 0.003}};
  r.cost_model_error = -1;  // no prediction yet
  reg.RecordStep(r);
  r.cost_model_rates = {{"flops", 3e10}, {"fixed_seconds", 0.004}};
  r.cost_model_error = 0.12;
  reg.RecordStep(r);
  const auto fs = reg.Collect();
  const auto& rates = Family(fs, "dynamoe_cost_model_rate");
  ASSERT_EQ(rates.metric.size(), 2u);
  EXPECT_EQ(Label(rates.metric[0], "kind"), "flops");
  EXPECT_EQ(rates.metric[0].gauge.value, 3e10);
  EXPECT_EQ(Label(rates.metric[1], "kind"), "fixed_seconds");
  EXPECT_EQ(rates.metric[1].gauge.value, 0.004);
  EXPECT_EQ(Label(rates.metric[1], "layer"), "moe0");
  EXPECT_EQ(Label(rates.metric[1], "rank"), "1");
  const auto& error = Family(fs, "dynamoe_cost_model_error");
  ASSERT_EQ(error.metric.size(), 1u);
  EXPECT_EQ(error.metric[0].gauge.value, 0.12);
}

TEST(Metrics, ExpositionPassesPromtool) {
  MetricsRegistry reg(0, {/*per_expert=*/true});
  reg.RecordStep(Report({5, 0, 3, 0}, {9, 0, 3, 0}, 7));
  const std::string text = prometheus::TextSerializer().Serialize(reg.Collect());
  EXPECT_NE(text.find("dynamoe_expert_tokens_total{expert=\"0\",layer=\"moe0\",rank=\"0\"} 5"), std::string::npos)
      << text;
  if (std::system("command -v promtool > /dev/null 2>&1") != 0) GTEST_SKIP() << "promtool is not installed";
  char path[] = "/tmp/dynamoe_metrics_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  const std::string cmd = std::string("promtool check metrics < ") + path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[256];
  while (fgets(buf, sizeof(buf), p)) out += buf;
  const int rc = pclose(p);
  std::remove(path);
  EXPECT_EQ(rc, 0) << out;
}

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A client socket connected to the server, with a receive timeout so a test
// fails rather than hangs.
int Connect(int port, int timeout_s = 15) {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  timeval tv{timeout_s, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return s;
}

// Sends `request` whole and reads the answer to EOF (or the timeout).
std::string Exchange(int port, const std::string& request) {
  const int s = Connect(port);
  EXPECT_EQ(send(s, request.data(), request.size(), MSG_NOSIGNAL), static_cast<ssize_t>(request.size()));
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = recv(s, buf, sizeof(buf), 0)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(s);
  return out;
}

std::string HttpGet(int port, const std::string& path) {
  return Exchange(port, "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n");
}

std::string Body(const std::string& response) {
  const size_t end = response.find("\r\n\r\n");
  return end == std::string::npos ? "" : response.substr(end + 4);
}

// Sends one byte of a request every `period` on its own thread (a
// slow-loris client) until the server closes it, `stop` is set or 20 s pass.
class SlowClient {
 public:
  SlowClient(int port, std::chrono::milliseconds period) : fd_(Connect(port)), thread_([this, period] {
    const std::string req = "GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Padding: " + std::string(64, 'x') + "\r\n\r\n";
    const Clock::time_point start = Clock::now();
    for (size_t i = 0; i < req.size() && !stop_ && SecondsSince(start) < 20; ++i) {
      if (send(fd_, &req[i], 1, MSG_NOSIGNAL) != 1) break;
      for (auto slept = std::chrono::milliseconds(0); slept < period && !stop_; slept += std::chrono::milliseconds(10))
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }) {}
  ~SlowClient() {
    stop_ = true;
    thread_.join();
    close(fd_);
  }
  // Seconds until the server closed the connection (recv saw EOF or an error).
  double SecondsUntilClosed() {
    const Clock::time_point start = Clock::now();
    char buf[256];
    while (recv(fd_, buf, sizeof(buf), 0) > 0) {
    }
    return SecondsSince(start);
  }

 private:
  const int fd_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

std::shared_ptr<MetricsRegistry> OneLayer(MetricsOptions options = {}) {
  auto reg = std::make_shared<MetricsRegistry>(1, options);
  reg->RecordStep(Report({2, 0, 1}, {2, 0, 1}, 0));
  return reg;
}

TEST(Metrics, ServerAnswersScrapesAndNamesABusyPort) {
  auto reg = OneLayer({/*per_expert=*/true});
  auto first = MetricsServer::Start("127.0.0.1", 0, reg);
  ASSERT_TRUE(first.ok()) << first.status();
  const int port = (*first)->port();
  for (int i = 0; i < 3; ++i) {  // several scrapes in a row
    const std::string r = HttpGet(port, "/metrics");
    EXPECT_NE(r.find("HTTP/1.1 200 OK"), std::string::npos) << r;
    EXPECT_NE(r.find("text/plain; version=0.0.4"), std::string::npos) << r;
    EXPECT_NE(r.find("dynamoe_expert_tokens_total{expert=\"2\",layer=\"moe0\",rank=\"1\"} 1"), std::string::npos)
        << r;
  }
  auto second = MetricsServer::Start("127.0.0.1", port, reg);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("127.0.0.1:" + std::to_string(port)), std::string::npos)
      << second.status();
  EXPECT_NE(second.status().message().find("Address already in use"), std::string::npos) << second.status();
  EXPECT_NE(second.status().message().find("DYNAMOE_METRICS_PORT"), std::string::npos) << second.status();
  const auto bad = MetricsServer::Start("not-an-address", 1, reg);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
}

TEST(Metrics, ServerAnswersHeadAndRefusesOtherMethodsAndPaths) {
  auto server = MetricsServer::Start("127.0.0.1", 0, OneLayer());
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  const std::string get = HttpGet(port, "/metrics?x=1");
  const std::string head = Exchange(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_NE(head.find("HTTP/1.1 200 OK\r\n"), std::string::npos) << head;
  EXPECT_NE(head.find("Content-Length: " + std::to_string(Body(get).size()) + "\r\n"), std::string::npos) << head;
  EXPECT_FALSE(Body(get).empty());
  EXPECT_TRUE(absl::EndsWith(head, "\r\n\r\n")) << "HEAD must not carry a body: " << head;
  const std::string post = Exchange(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  EXPECT_TRUE(absl::StartsWith(post, "HTTP/1.1 405 Method Not Allowed\r\n")) << post;
  EXPECT_NE(post.find("Allow: GET, HEAD\r\n"), std::string::npos) << post;
  EXPECT_TRUE(absl::StartsWith(HttpGet(port, "/other"), "HTTP/1.1 404 Not Found\r\n"));
  const std::string head404 = Exchange(port, "HEAD /other HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(absl::StartsWith(head404, "HTTP/1.1 404")) << head404;
  EXPECT_TRUE(absl::EndsWith(head404, "\r\n\r\n")) << head404;
  EXPECT_TRUE(absl::StartsWith(Exchange(port, "nonsense\r\n\r\n"), "HTTP/1.1 400 Bad Request\r\n"));
  EXPECT_TRUE(absl::StartsWith(Exchange(port, "GET /metrics HTTP/1.0\n\n"), "HTTP/1.1 200 OK\r\n"));
  const std::string huge = "GET /metrics HTTP/1.1\r\nX: " + std::string(kMaxRequestHead, 'x') + "\r\n\r\n";
  EXPECT_TRUE(absl::StartsWith(Exchange(port, huge), "HTTP/1.1 431")) << Exchange(port, huge).substr(0, 80);
}

TEST(Metrics, HttpRespondWaitsForTheWholeHead) {
  int served = 0;
  const auto metrics = [&] { return ++served, std::string("m 1\n"); };
  EXPECT_FALSE(HttpRespond("GET /metrics HTTP/1.1\r\nHost: x\r\n", metrics).has_value());
  EXPECT_EQ(served, 0);
  const auto r = HttpRespond("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", metrics);
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(absl::EndsWith(*r, "\r\n\r\nm 1\n")) << *r;
  EXPECT_NE(r->find("Content-Length: 4\r\n"), std::string::npos) << *r;
}

// True while the peer has not closed `fd` (no EOF, no error).
bool StillOpen(int fd) {
  char c;
  const ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
  return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
}

// The numbers: 4 idle connections delayed a scrape by 7.9 s, and a
// client sending a byte every 1.5 s stalled scrapes and held the exit. Each
// connection's deadline is 60 s here, so a server that waited on any client
// would take a minute: the scrapes must be answered while the idle clients are
// still connected, and stop must close them. The 20 s bounds are generous on
// a loaded machine and still a third of what waiting would take; the printed
// times are the measurement (README "Metrics").
TEST(Metrics, SlowClientsDelayNeitherAScrapeNorStop) {
  MetricsServerOptions options;
  options.request_deadline = std::chrono::seconds(60);
  auto server = MetricsServer::Start("127.0.0.1", 0, OneLayer(), options);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  std::vector<int> idle;
  for (int i = 0; i < 4; ++i) idle.push_back(Connect(port, /*timeout_s=*/30));
  SlowClient slow(port, std::chrono::milliseconds(1500));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the slow client is connected and has sent
  for (int i = 0; i < 2; ++i) {
    const Clock::time_point start = Clock::now();
    const std::string r = HttpGet(port, "/metrics");
    const double took = SecondsSince(start);
    EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.1 200 OK")) << r;
    EXPECT_LT(took, 20.0) << "scrape " << i << " waited on the slow clients";
    for (int fd : idle) EXPECT_TRUE(StillOpen(fd)) << "the scrape was answered only after an idle client was cut";
    std::printf("scrape %d with 4 idle and 1 slow client: %.4f s\n", i, took);
  }
  const Clock::time_point start = Clock::now();
  server->reset();  // what process exit runs
  const double took = SecondsSince(start);
  EXPECT_LT(took, 20.0) << "stopping waited on a client";
  char c;
  for (int fd : idle) EXPECT_EQ(recv(fd, &c, 1, 0), 0) << "stop left an idle client connected";  // EOF, not timeout
  std::printf("stop with 5 clients connected: %.4f s\n", took);
  for (int fd : idle) close(fd);
}

TEST(Metrics, OneDeadlineCoversTheWholeRequest) {
  MetricsServerOptions options;
  options.request_deadline = std::chrono::milliseconds(1000);
  auto server = MetricsServer::Start("127.0.0.1", 0, OneLayer(), options);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  SlowClient slow(port, std::chrono::milliseconds(300));  // each byte well within any per-recv timeout
  const int idle = Connect(port);
  // Cut at its deadline, not before. Without one deadline per request it would
  // last as long as it sends (20 s, the client's own cap), and the receive
  // timeout is 15 s: the 10 s bound tells those apart with room for load.
  const double slow_s = slow.SecondsUntilClosed();
  EXPECT_GT(slow_s, 0.8);
  EXPECT_LT(slow_s, 10.0) << "the slow client was not cut at its deadline";
  char c;
  EXPECT_EQ(recv(idle, &c, 1, 0), 0) << "the idle client was not closed (EOF) at its deadline";
  close(idle);
  EXPECT_TRUE(absl::StartsWith(HttpGet(port, "/metrics"), "HTTP/1.1 200 OK"));
}

TEST(Metrics, ConnectionsOverTheCapAreRefusedAtOnce) {
  MetricsServerOptions options;
  options.max_connections = 4;
  options.request_deadline = std::chrono::seconds(60);  // a queued client would wait a minute
  auto server = MetricsServer::Start("127.0.0.1", 0, OneLayer(), options);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  std::vector<int> idle;
  for (int i = 0; i < 4; ++i) idle.push_back(Connect(port, /*timeout_s=*/30));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // all four accepted
  const Clock::time_point start = Clock::now();
  const std::string refused = HttpGet(port, "/metrics");
  EXPECT_LT(SecondsSince(start), 20.0) << "the fifth client waited for a slot";  // generous; waiting takes 60 s
  EXPECT_TRUE(refused.empty() || absl::StartsWith(refused, "HTTP/1.1 503")) << refused;
  for (int fd : idle) EXPECT_TRUE(StillOpen(fd)) << "an idle client was cut to make room";
  for (int fd : idle) close(fd);
  // Once the server has seen them go (it polls; allow for a loaded machine) a scrape is served.
  std::string served;
  for (int i = 0; i < 100 && !absl::StartsWith(served, "HTTP/1.1 200 OK"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    served = HttpGet(port, "/metrics");
  }
  EXPECT_TRUE(absl::StartsWith(served, "HTTP/1.1 200 OK")) << served;
  (*server)->Stop();
  (*server)->Stop();  // idempotent
}

// Series per process (README "Metrics"): L layers x (10 + 2 min(4, E) + 9 x 16) + 1
// by default, plus L x E with per-expert series.
int64_t CountSeries(const std::string& exposition) {
  int64_t n = 0;
  for (const auto& line : absl::StrSplit(Body(exposition), '\n'))
    if (!line.empty() && line[0] != '#') ++n;
  return n;
}

TEST(Metrics, SeriesCountIsBoundedUnlessPerExpertIsAskedFor) {
  for (const int64_t experts : {8, 256}) {
    for (const bool per_expert : {false, true}) {
      const int64_t layers = 3;
      auto reg = std::make_shared<MetricsRegistry>(0, MetricsOptions{per_expert});
      for (int64_t l = 0; l < layers; ++l)
        for (int step = 0; step < 2; ++step) {
          StepReport r = Report(std::vector<int64_t>(experts, 1), std::vector<int64_t>(experts, 2), 0);
          r.layer = "layer" + std::to_string(l);
          reg->RecordStep(r);
        }
      auto server = MetricsServer::Start("127.0.0.1", 0, reg);
      ASSERT_TRUE(server.ok()) << server.status();
      const int64_t want =
          layers * (10 + 2 * std::min<int64_t>(4, experts) + 9 * 16) + 1 + (per_expert ? layers * experts : 0);
      EXPECT_EQ(CountSeries(HttpGet((*server)->port(), "/metrics")), want)
          << experts << " experts, per_expert " << per_expert;
    }
  }
}

}  // namespace
}  // namespace dynamoe::monitor
