// The metrics registry (families and values after known steps), the text
// exposition (checked by promtool where it is installed) and the exposer's
// clear error on a port in use.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include <gtest/gtest.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include "monitor/metrics.h"
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
  MetricsRegistry reg(3);
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
  EXPECT_EQ(Family(fs, "dynamoe_tokens_dropped_total").metric.at(0).counter.value, 6);
  EXPECT_DOUBLE_EQ(Family(fs, "dynamoe_load_imbalance_ratio").metric.at(0).gauge.value, 4.0);  // 12 / mean 3
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

TEST(Metrics, DeadExpertsAgeOutOfTheWindow) {
  MetricsRegistry reg(0);
  reg.RecordStep(Report({1, 1}, {1, 1}, 0));
  for (int64_t i = 0; i + 1 < kDeadExpertWindow; ++i) reg.RecordStep(Report({1, 0}, {1, 0}, 0));
  // Expert 1 had tokens in the first of the latest 100 steps: alive.
  EXPECT_EQ(Family(reg.Collect(), "dynamoe_dead_experts").metric.at(0).gauge.value, 0);
  reg.RecordStep(Report({1, 0}, {1, 0}, 0));  // now none in the latest 100
  EXPECT_EQ(Family(reg.Collect(), "dynamoe_dead_experts").metric.at(0).gauge.value, 1);
}

TEST(Metrics, ExpositionPassesPromtool) {
  MetricsRegistry reg(0);
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

std::string HttpGet(int port, const std::string& path) {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n";
  EXPECT_EQ(send(s, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = recv(s, buf, sizeof(buf), 0)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(s);
  return out;
}

TEST(Metrics, ServerAnswersScrapesAndNamesABusyPort) {
  auto reg = std::make_shared<MetricsRegistry>(1);
  reg->RecordStep(Report({2, 0, 1}, {2, 0, 1}, 0));
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
  EXPECT_NE(HttpGet(port, "/other").find("404"), std::string::npos);
  auto second = MetricsServer::Start("127.0.0.1", port, reg);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("127.0.0.1:" + std::to_string(port)), std::string::npos)
      << second.status();
  EXPECT_NE(second.status().message().find("Address already in use"), std::string::npos) << second.status();
  EXPECT_NE(second.status().message().find("DYNAMOE_METRICS_PORT"), std::string::npos) << second.status();
  const auto bad = MetricsServer::Start("not-an-address", 1, reg);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
}

}  // namespace
}  // namespace dynamoe::monitor
