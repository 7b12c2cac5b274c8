// bench_placement_ep: step time of each placement policy against `none` on
// CPU processes (world 4, Gloo) under a skewed workload, measured side by side
// in one run: every repetition runs one training step (forward + backward) of
// each policy's layer in turn on the same tokens (rotating which goes first),
// so machine noise hits all policies alike. Prints each policy's median step
// time, the median of its per-repetition ratios to none, the copies it made
// and the cost model's prediction.
// `none` runs twice, as two separate layers (an A/A control): their ratio
// shows how far two identical setups differ here, the noise band every other
// ratio must clear to mean anything.
//
// The cost model is calibrated to this machine first: a short launch measures
// the expert GEMM rate and the all-to-all bandwidth of 4 ranks sharing the
// CPU, and the measuring launch gets them as DYNAMOE_GPU_FLOPS / DYNAMOE_INTRA_BW.
//
//   ./build/default/bench/bench_placement_ep [--skew hot|zipf] [--tokens 1024] [--reps 20]
//   hot:  every token's first choice is expert 0 (rank 0's)
//   zipf: router bias 2, 1.5, 1, ... on experts 0..7 (a few popular experts)
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <vector>
#include <iostream>
#include <sstream>

#include "bench/bench_util.h"
#include "bindings/moe_layer.h"
#include "common/status.h"
#include "runtime/rendezvous.h"
#include "tools/local_launch.h"

namespace {

struct Args {
  int tokens = 1024, reps = 20, d_model = 256, d_hidden = 512, experts = 8, top_k = 2;
  std::string skew = "hot", mode = "measure";
};

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i], v = argv[i + 1];
    if (f == "--tokens") a.tokens = std::stoi(v);
    else if (f == "--reps") a.reps = std::stoi(v);
    else if (f == "--skew") a.skew = v;
    else if (f == "--mode") a.mode = v;
    else {
      std::cerr << "usage: bench_placement_ep [--skew hot|zipf] [--tokens N] [--reps N]\n";
      std::exit(2);
    }
  }
  if (a.skew != "hot" && a.skew != "zipf") {
    std::cerr << "bench_placement_ep: --skew must be hot or zipf, got " << a.skew << "\n";
    std::exit(2);
  }
  return a;
}

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Row labels and their policies; the second `none` is the A/A control.
const char* kLabels[] = {"none", "none again (A/A)", "fastermoe", "adaptive", "eplb"};
const char* kPolicies[] = {"none", "none", "fastermoe", "adaptive", "eplb"};
constexpr size_t kRows = sizeof(kPolicies) / sizeof(kPolicies[0]);

dynamoe::MoELayer MakeLayer(const Args& a, const dynamoe::runtime::ParallelGroups& g, const std::string& policy,
                            bool skewed = true) {
  torch::manual_seed(1);
  dynamoe::MoELayer layer(dynamoe::MoEOptions(a.d_model, a.d_hidden, a.experts).top_k(a.top_k), g.ep);
  layer->set_placement(policy);
  torch::NoGradGuard no_grad;
  for (int64_t e = 0; e < a.experts && skewed; ++e)
    layer->expert_bias[e] = a.skew == "hot" ? (e == 0 ? 1e4 : 0.0) : 2.0 - 0.5 * static_cast<double>(e);
  return layer;
}

double Step(dynamoe::MoELayer& layer, const torch::Tensor& x, const dynamoe::runtime::ParallelGroups& g) {
  dynamoe::ThrowIfError(g.world->Barrier({"bench", "step"}));
  const double t0 = Now();
  const torch::Tensor y = layer->forward(x);
  (y.square().mean() + layer->aux_loss).backward();
  for (auto& p : layer->parameters()) p.mutable_grad() = torch::Tensor();
  dynamoe::ThrowIfError(g.world->Barrier({"bench", "step"}));  // the step ends when the slowest rank ends
  return Now() - t0;
}

// Calibration on balanced routing: expert FLOP/s and token bytes/s of plain
// EP, and the per-message latency (a one-row all-to-all / peers).
int Calibrate(const Args& a, const dynamoe::runtime::ParallelGroups& g) {
  dynamoe::MoELayer layer = MakeLayer(a, g, "none", false);
  torch::manual_seed(100 + g.world_rank);
  const torch::Tensor x = torch::randn({a.tokens, a.d_model});
  double flops = 0, expert_s = 0, bytes = 0, move_s = 0;
  for (int s = -1; s < 3; ++s) {
    Step(layer, x, g);
    if (s < 0) continue;
    const auto& st = layer->stats();
    const std::map<std::string, double> phase = st.phase_seconds();
    const int64_t rows = st.counts.select(1, 2 * g.world_rank).sum().item<int64_t>() +
                         st.counts.select(1, 2 * g.world_rank + 1).sum().item<int64_t>();
    flops += 2.0 * 2 * a.d_model * a.d_hidden * static_cast<double>(rows);
    expert_s += phase.at("experts");
    bytes += static_cast<double>(st.bytes_sent + st.bytes_received) / 2;
    move_s += phase.at("dispatch") + phase.at("combine");
  }
  const std::vector<int64_t> one(g.world_size, 1);
  const torch::Tensor row = torch::zeros({g.world_size, 1}), out = torch::empty({g.world_size, 1});
  const double t0 = Now();
  for (int i = 0; i < 20; ++i) dynamoe::ThrowIfError(g.ep->AllToAll(row, out, one, one, {"bench", "latency"}));
  const double latency = (Now() - t0) / 20 / (g.world_size - 1);
  at::Tensor mine = torch::tensor({flops, expert_s, bytes, move_s, latency}, torch::kDouble);
  at::Tensor all = torch::empty({g.world_size * 5}, torch::kDouble);
  dynamoe::ThrowIfError(g.world->AllGather(mine, all, {"bench", "calibrate"}));
  const at::Tensor sum = all.view({g.world_size, 5}).sum(0);
  const double* v = sum.data_ptr<double>();
  if (g.world_rank == 0)
    std::printf("calibration flops=%.4g bw=%.4g latency_us=%.4g\n", v[0] / v[1], v[2] / std::max(v[3], 1e-9),
                v[4] / g.world_size * 1e6);
  return 0;
}

int Measure(const Args& a, const dynamoe::runtime::ParallelGroups& g) {
  std::vector<dynamoe::MoELayer> layers;
  for (const char* p : kPolicies) layers.push_back(MakeLayer(a, g, p));
  torch::manual_seed(100 + g.world_rank);
  const torch::Tensor x = torch::randn({a.tokens, a.d_model});
  // Per row: step seconds and predictions per repetition (medians reported:
  // one slow step on this shared machine must not move a row), copies summed.
  std::vector<std::vector<double>> seconds(kRows), predicted(kRows);
  std::vector<double> copies(kRows, 0.0);
  for (int rep = -2; rep < a.reps; ++rep)  // two warm-up repetitions
    for (size_t i = 0; i < kRows; ++i) {
      const size_t p = (i + static_cast<size_t>(rep + 2)) % kRows;  // rotate who goes first
      const double t = Step(layers[p], x, g);
      if (rep < 0) continue;
      seconds[p].push_back(t);
      predicted[p].push_back(layers[p]->stats().predicted_step_seconds());
      for (int64_t c : layers[p]->stats().replicas()) copies[p] += static_cast<double>(c) / a.reps;
    }
  using dynamoe::bench::Median;
  if (g.world_rank == 0)  // every rank's step ends at the same barrier: rank 0's times are the step's
    for (size_t p = 0; p < kRows; ++p) {
      // vs none: the median of the per-repetition ratios (each against none's
      // step of the same repetition), so load that drifts between
      // repetitions cancels.
      std::vector<double> ratio;
      for (size_t r = 0; r < seconds[p].size(); ++r) ratio.push_back(seconds[p][r] / seconds[0][r]);
      std::printf("| %s | %.1f | %.2f | %.1f | %.1f | %.2f |\n", kLabels[p], Median(seconds[p]) * 1e3, Median(ratio),
                  copies[p], Median(predicted[p]) * 1e3, Median(predicted[p]) / Median(predicted[0]));
    }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = Parse(argc, argv);
  if (std::getenv("RANK")) {
    auto g = dynamoe::ValueOrThrow(dynamoe::runtime::InitFromEnv());
    return a.mode == "calibrate" ? Calibrate(a, *g) : Measure(a, *g);
  }
  const int world = 4;
  auto launch = [&](const std::string& mode, const std::map<std::string, std::string>& env) {
    dynamoe::tools::LaunchOptions opts;
    opts.timeout_s = 900;
    opts.env = env;
    opts.env["DYNAMOE_LOG_LEVEL"] = "warning";
    std::vector<std::string> args(argv + 1, argv + argc);
    args.push_back("--mode");
    args.push_back(mode);
    const auto results = dynamoe::tools::LaunchLocal(dynamoe::tools::SelfExecutable(), args, world, opts);
    for (size_t r = 0; r < results.size(); ++r)
      if (results[r].exit_code != 0) {
        std::cerr << "rank " << r << " failed (exit " << results[r].exit_code << "):\n" << results[r].err;
        std::exit(1);
      }
    return results[0].out;
  };
  const std::string cal = launch("calibrate", {});
  double flops = 0, bw = 0, latency_us = 0;
  if (std::sscanf(cal.c_str(), "calibration flops=%lf bw=%lf latency_us=%lf", &flops, &bw, &latency_us) != 3) {
    std::cerr << "bench_placement_ep: calibration printed no figures:\n" << cal;
    return 1;
  }
  std::printf("bench_placement_ep: world 4 (CPU processes, Gloo), %d tokens per rank, d_model %d, d_hidden %d, "
              "%d experts, top-%d, fp32, skew %s; median of %d repetitions, policies interleaved\n",
              a.tokens, a.d_model, a.d_hidden, a.experts, a.top_k, a.skew.c_str(), a.reps);
  std::printf("cost model calibrated on this machine (balanced routing): %.3g FLOP/s per rank, %.3g B/s per link, "
              "%.0f us per message\n\n",
              flops, bw, latency_us);
  std::printf("| policy | step ms | vs none | copies/step | predicted ms | predicted vs none |\n");
  std::printf("|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  std::ostringstream f, b, l;
  f << flops;
  b << bw;
  l << latency_us;
  std::cout << launch("measure", {{"DYNAMOE_GPU_FLOPS", f.str()}, {"DYNAMOE_INTRA_BW", b.str()},
                                  {"DYNAMOE_LATENCY_US", l.str()}});
  return 0;
}
