// Cost of monitoring on the real layer: dynamoe::MoELayer forward + backward
// with DYNAMOE_METRICS_PORT and DYNAMOE_TRACE set ("on") against unset
// ("off"). Both variables are read once per process, so each sample is a
// child process (this binary with --child) that times `steps` steps after a
// warm-up. One run interleaves them, rounds of [off, on, off] children with
// the order rotated each round, so drift reaches both sides. "On" children
// run everything monitoring costs: the report and RecordStep in the step, the
// trace record and its writer thread (writing a real file), and the metrics
// endpoint, scraped once a second by a client thread (Prometheus' Collect and
// serialisation). Prints per-mode medians, the median per-round on/off ratio,
// and the off/off ratio of the same rounds (the A/A control: the noise floor).
//
//   bench_monitor [--rounds 5] [--steps 10] [--tokens 2048] [--d_model 512]
//                 [--d_hidden 1024] [--experts 64]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "bindings/moe_layer.h"

namespace {

using dynamoe::bench::Median;
using dynamoe::bench::Seconds;

struct Shape {
  int64_t tokens = 2048, d_model = 512, d_hidden = 1024, experts = 64, top_k = 2;
};

// One HTTP GET of /metrics on loopback; the body, or "" on failure.
std::string Scrape(int port) {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
    const std::string req = "GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n";
    if (send(s, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[65536];
      for (ssize_t n; (n = recv(s, buf, sizeof(buf), 0)) > 0;) out.append(buf, static_cast<size_t>(n));
    }
  }
  close(s);
  const size_t body = out.find("\r\n\r\n");
  return body == std::string::npos ? "" : out.substr(body + 4);
}

// A child: times `steps` forward + backward steps after two warm-up steps and
// prints "median_s <seconds>", and with metrics on "monitored <0|1>": whether
// the endpoint served the layer's series and the trace file has data.
int Child(const Shape& s, int steps) {
  torch::manual_seed(0);
  dynamoe::MoELayer moe(dynamoe::MoEOptions(s.d_model, s.d_hidden, s.experts).top_k(s.top_k).name("bench"));
  const torch::Tensor x = torch::randn({s.tokens, s.d_model}).requires_grad_();
  const char* port_env = std::getenv("DYNAMOE_METRICS_PORT");
  const int port = port_env ? std::atoi(port_env) : 0;
  std::atomic<bool> stop{false};
  std::thread scraper;
  for (int i = 0; i < 2; ++i) moe->forward(x).sum().backward();  // the first step binds the port
  if (port)
    scraper = std::thread([&] {  // a Prometheus scraping every second
      while (!stop) {
        Scrape(port);
        for (int ms = 0; ms < 1000 && !stop; ms += 10) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
  std::vector<double> t;
  for (int i = 0; i < steps; ++i) t.push_back(Seconds([&] { moe->forward(x).sum().backward(); }));
  stop = true;
  if (scraper.joinable()) scraper.join();
  std::printf("median_s %.9f\n", Median(t));
  if (port) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // one trace flush period
    const std::string trace = std::string(std::getenv("DYNAMOE_TRACE")) + ".rank0.dmtrace";
    std::error_code ec;
    const bool traced = std::filesystem::file_size(trace, ec) > 0 && !ec;
    const bool served = Scrape(port).find("dynamoe_routed_tokens_total{layer=\"bench\"") != std::string::npos;
    std::printf("monitored %d\n", traced && served ? 1 : 0);
  }
  std::fflush(stdout);
  return 0;
}

int FreePort() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  close(s);
  return ntohs(a.sin_port);
}

// Runs one child; its median step seconds, or -1 on failure. A metrics port
// taken between choosing and binding is retried with another.
double RunChild(const std::string& self, const std::string& args, bool on, const std::string& trace_prefix) {
  for (int attempt = 0; attempt < 4; ++attempt) {
    std::string cmd = "env -u DYNAMOE_METRICS_PORT -u DYNAMOE_TRACE DYNAMOE_LOG_LEVEL=warning ";
    if (on) cmd += absl::StrFormat("DYNAMOE_METRICS_PORT=%d DYNAMOE_TRACE=%s ", FreePort(), trace_prefix);
    cmd += "'" + self + "' --child 1 " + args + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return -1;
    std::string out;
    char buf[512];
    while (fgets(buf, sizeof(buf), p)) out += buf;
    const int rc = pclose(p);
    double median = -1;
    int monitored = -1;
    for (size_t at = 0; at < out.size();) {
      const size_t end = out.find('\n', at);
      const std::string line = out.substr(at, end == std::string::npos ? std::string::npos : end - at);
      std::sscanf(line.c_str(), "median_s %lf", &median);
      std::sscanf(line.c_str(), "monitored %d", &monitored);
      at = end == std::string::npos ? out.size() : end + 1;
    }
    if (rc == 0 && median > 0 && (!on || monitored == 1)) return median;
    if (out.find("Address already in use") == std::string::npos) {
      std::cerr << "child (" << (on ? "on" : "off") << ") failed:\n" << out;
      return -1;
    }
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  Shape shape;
  int rounds = 5, steps = 10;
  bool child = false;
  const std::map<std::string, int64_t*> dims = {{"--tokens", &shape.tokens}, {"--d_model", &shape.d_model},
                                                {"--d_hidden", &shape.d_hidden}, {"--experts", &shape.experts}};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--rounds") rounds = std::atoi(argv[i + 1]);
    else if (flag == "--steps") steps = std::atoi(argv[i + 1]);
    else if (flag == "--child") child = true;
    else if (dims.count(flag)) *dims.at(flag) = std::atoll(argv[i + 1]);
  }
  if (child) return Child(shape, steps);

  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string args = absl::StrFormat("--steps %d --tokens %d --d_model %d --d_hidden %d --experts %d", steps,
                                           shape.tokens, shape.d_model, shape.d_hidden, shape.experts);
  char dir[] = "/tmp/bench_monitor_XXXXXX";
  if (!mkdtemp(dir)) return 1;
  std::vector<double> on_s, off_s, on_ratio, aa_ratio;
  for (int r = 0; r < rounds; ++r) {
    // Three slots, rotated: off on off, on off off, off off on, ...
    double off1 = -1, off2 = -1, on = -1;
    for (int slot = 0; slot < 3; ++slot) {
      const int which = (slot + r) % 3;  // 0: off (first), 1: on, 2: off (second)
      const double s = RunChild(self, args, which == 1, absl::StrFormat("%s/r%d", dir, r));
      if (s < 0) return 1;
      (which == 0 ? off1 : which == 1 ? on : off2) = s;
    }
    on_s.push_back(on), off_s.push_back(off1), off_s.push_back(off2);
    on_ratio.push_back(on / ((off1 + off2) / 2));
    aa_ratio.push_back(off2 / off1);
    std::printf("round %d: off %.2f ms, on %.2f ms, off %.2f ms\n", r, off1 * 1e3, on * 1e3, off2 * 1e3);
  }
  std::filesystem::remove_all(dir);
  auto range = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return absl::StrFormat("%.4f .. %.4f", v.front(), v.back());
  };
  std::printf(
      "\nlayer fwd+bwd (%d tokens, d_model %d, d_hidden %d, %d experts, top-%d), one process, median of %d steps "
      "per child, %d rounds\n"
      "off (metrics and trace unset):                         median %.2f ms\n"
      "on  (DYNAMOE_METRICS_PORT + DYNAMOE_TRACE, 1 s scrapes): median %.2f ms\n"
      "on/off per round:  median %.4f (range %s)\n"
      "off/off per round: median %.4f (range %s)  A/A control: the noise floor\n",
      shape.tokens, shape.d_model, shape.d_hidden, shape.experts, shape.top_k, steps, rounds, Median(off_s) * 1e3,
      Median(on_s) * 1e3, Median(on_ratio), range(on_ratio).c_str(), Median(aa_ratio), range(aa_ratio).c_str());
  return 0;
}
