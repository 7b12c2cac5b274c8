// Cost of the monitoring a step does with DYNAMOE_METRICS_PORT and
// DYNAMOE_TRACE on, against the layer step itself, measured side by side in
// one run: per round, one forward + backward of a CPU layer, then the same
// monitoring work the step does for it (build the report, RecordStep, encode
// and queue a trace record; the writer thread writes to /dev/null), repeated
// `reps` times to rise above timer resolution. Prints medians and the ratio.
//
//   bench_monitor [--rounds 9] [--world 8]
#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <iostream>

#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "bindings/moe_layer.h"
#include "monitor/metrics.h"
#include "monitor/trace_writer.h"

namespace {

using dynamoe::bench::Median;
using dynamoe::bench::Seconds;

}  // namespace

int main(int argc, char** argv) {
  int rounds = 9, world = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--rounds")) rounds = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--world")) world = std::atoi(argv[i + 1]);
  }
  const int64_t tokens = 2048, d_model = 512, d_hidden = 1024, experts = 64, top_k = 2;
  torch::manual_seed(0);
  dynamoe::MoELayer moe(dynamoe::MoEOptions(d_model, d_hidden, experts).top_k(top_k).name("bench"));
  const torch::Tensor x = torch::randn({tokens, d_model}).requires_grad_();
  auto registry = std::make_shared<dynamoe::monitor::MetricsRegistry>(0);
  auto writer = dynamoe::monitor::TraceWriter::Open("/dev/null", world, 0, {"gate", "experts"});
  if (!writer.ok()) {
    std::cerr << writer.status() << "\n";
    return 1;
  }
  const int64_t layer = (*writer)->AddLayer({"bench", experts, d_model, d_hidden, false, false, 4});
  constexpr int reps = 100;
  std::vector<double> step_s, monitor_s;
  for (int r = 0; r < rounds + 1; ++r) {
    const double s = Seconds([&] { moe->forward(x).sum().backward(); });
    const dynamoe::MoEStats st = moe->stats();
    // As the step reports it: this rank's routed counts, the loads of a
    // world x experts count matrix (this rank's row repeated), the phases.
    const torch::Tensor routed = st.routed_counts.contiguous();
    std::vector<int64_t> counts(world * experts);
    for (int64_t i = 0; i < world * experts; ++i) counts[i] = routed.data_ptr<int64_t>()[i % experts];
    const double m = Seconds([&] {
      for (int i = 0; i < reps; ++i) {
        dynamoe::monitor::StepReport rep;
        rep.layer = "bench";
        rep.routed.assign(routed.data_ptr<int64_t>(), routed.data_ptr<int64_t>() + experts);
        rep.expert_loads.assign(experts, 0);
        for (int64_t j = 0; j < world * experts; ++j) rep.expert_loads[j % experts] += counts[j];
        rep.times.seconds[0] = 1e-4, rep.times.seconds[5] = 1e-2, rep.step_seconds = s;
        registry->RecordStep(rep);
        dynamoe::placement::TraceStep ts;
        ts.step = r, ts.layer = layer;
        ts.kept = *dynamoe::placement::CountMatrix::Make(world, experts, counts);
        ts.routed = ts.kept;
        ts.plan = dynamoe::placement::Plan::None(world, experts);
        ts.phase_seconds.assign(rep.times.seconds.begin(), rep.times.seconds.end());
        (*writer)->Append(ts);
      }
    }) / reps;
    if (r > 0) step_s.push_back(s), monitor_s.push_back(m);  // round 0 warms up
  }
  const double step = Median(step_s), mon = Median(monitor_s);
  std::cout << absl::StrFormat(
      "layer step (fwd+bwd, %d tokens, d_model %d, d_hidden %d, %d experts, top-%d): median %.3f ms\n"
      "monitoring per step (metrics + trace record, world %d): median %.2f us\n"
      "ratio: %.4f%% of the step (target < 1%%)\n\n",
      tokens, d_model, d_hidden, experts, top_k, step * 1e3, world, mon * 1e6, 100 * mon / step);
  return (*writer)->Close().ok() ? 0 : 1;
}
