// bench_overlap: the overlap schedule against sequential and against the
// lower bound max(communication, compute), on CPU processes (Gloo), world
// sizes 2 and 4, all measured side by side in one run. Each repetition runs,
// in rotating order, one training step (forward + backward, x needing a
// gradient as inside a model) of the sequential layer and of each overlap
// layer, and the step's four token all-to-alls alone with the same splits:
//   communication = the all-to-alls alone (the slowest rank's time),
//   compute       = the sequential step minus the time it waited on
//                   collectives (the slowest rank's),
//   bound         = max(communication, compute).
// The workload (balanced routing, a narrow d_hidden) puts communication and
// compute within 2x of each other on this machine; the run prints their
// ratio. Each figure is the median over the repetitions (4 ranks on 2 cores
// are noisy; the median resists the occasional descheduled step). Target:
// overlap within 1.15x of the bound.
//
// Beside each measurement: the cost model's prediction from the measured
// communication and compute and the per-collective latency:
// sequential = x + c, overlap = PipelineSeconds(x, c, stages, 2 * latency).
//
//   ./build/default/bench/bench_overlap [--worlds 2,4] [--tokens 2048] [--d-model 1024]
//                                       [--d-hidden 8] [--degrees 1,2,4,8] [--reps 10]
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "bench/bench_util.h"
#include "bindings/moe_layer.h"
#include "common/status.h"
#include "placement/cost_model.h"
#include "runtime/rendezvous.h"
#include "scheduler/expert_parallel.h"
#include "scheduler/token_exchange.h"
#include "tools/local_launch.h"

namespace {

struct Args {
  std::string worlds = "2,4", degrees = "1,2,4,8";
  int tokens = 2048, d_model = 1024, d_hidden = 8, experts = 8, top_k = 2, reps = 10, group_size = 4;
};

std::vector<int> Ints(const std::string& list) {
  std::vector<int> out;
  std::stringstream ss(list);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(std::stoi(item));
  return out;
}

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i], v = argv[i + 1];
    if (f == "--worlds") a.worlds = v;
    else if (f == "--degrees") a.degrees = v;
    else if (f == "--tokens") a.tokens = std::stoi(v);
    else if (f == "--d-model") a.d_model = std::stoi(v);
    else if (f == "--d-hidden") a.d_hidden = std::stoi(v);
    else if (f == "--reps") a.reps = std::stoi(v);
    else if (f == "--group-size") a.group_size = std::stoi(v);
    else {
      std::cerr << "usage: bench_overlap [--worlds 2,4] [--tokens N] [--d-model N] [--d-hidden N] "
                   "[--degrees 1,2,4] [--group-size N] [--reps N]\n";
      std::exit(2);
    }
  }
  return a;
}

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

using dynamoe::runtime::ParallelGroups;

using dynamoe::bench::Median;

// One training step; returns (wall seconds between barriers, seconds this rank waited on the EP group).
std::pair<double, double> Step(dynamoe::MoELayer& layer, const torch::Tensor& x0, const ParallelGroups& g) {
  const torch::Tensor x = x0.clone().requires_grad_(true);
  dynamoe::ThrowIfError(g.world->Barrier({"bench", "step"}));
  const double w0 = g.ep->counters().wait_seconds, t0 = Now();
  const torch::Tensor y = layer->forward(x);
  (y.square().mean() + layer->aux_loss).backward();
  const double waited = g.ep->counters().wait_seconds - w0;
  dynamoe::ThrowIfError(g.world->Barrier({"bench", "step"}));  // the step ends when the slowest rank ends
  const double t = Now() - t0;
  for (auto& p : layer->parameters()) p.mutable_grad() = torch::Tensor();
  return {t, waited};
}

// The step's four token exchanges alone (dispatch and combine, forward and backward).
double CommOnly(const dynamoe::MoELayer& layer, int64_t d_model, const ParallelGroups& g) {
  const auto plan = dynamoe::scheduler::MakeExchangePlan(
      layer->stats().counts, g.ep->rank(), dynamoe::placement::Plan::None(g.ep_size, layer->options.num_experts()));
  int64_t sent = 0, received = 0;
  for (int64_t n : plan.send_rows) sent += n;
  for (int64_t n : plan.recv_rows) received += n;
  const torch::Tensor out = torch::randn({sent, d_model}), in = torch::empty({received, d_model});
  const dynamoe::runtime::CollectiveTag tag{"bench", "comm_only"};
  dynamoe::ThrowIfError(g.world->Barrier({"bench", "step"}));
  const double t0 = Now();
  for (int i = 0; i < 2; ++i) {
    dynamoe::ThrowIfError(g.ep->AllToAll(out, in, plan.send_rows, plan.recv_rows, tag));
    dynamoe::ThrowIfError(g.ep->AllToAll(in, out, plan.recv_rows, plan.send_rows, tag));
  }
  dynamoe::ThrowIfError(g.world->Barrier({"bench", "step"}));
  return Now() - t0;
}

// Seconds per message: a one-row all-to-all, per peer.
double Latency(const ParallelGroups& g) {
  const std::vector<int64_t> one(g.world_size, 1);
  const torch::Tensor row = torch::zeros({g.world_size, 1}), out = torch::empty({g.world_size, 1});
  const double t0 = Now();
  for (int i = 0; i < 20; ++i) dynamoe::ThrowIfError(g.ep->AllToAll(row, out, one, one, {"bench", "latency"}));
  return (Now() - t0) / 20 / std::max(1, g.world_size - 1);
}

double MaxOverRanks(const ParallelGroups& g, double v) {
  at::Tensor all = torch::empty({g.world_size}, torch::kDouble);
  dynamoe::ThrowIfError(g.world->AllGather(torch::tensor({v}, torch::kDouble), all, {"bench", "max"}));
  return all.max().item<double>();
}

int Measure(const Args& a, const ParallelGroups& g) {
  torch::set_num_threads(1);  // the ranks share this machine's cores
  std::vector<int> degrees = Ints(a.degrees);
  std::vector<dynamoe::MoELayer> layers;  // 0: sequential, then overlap per degree
  for (size_t i = 0; i <= degrees.size(); ++i) {
    torch::manual_seed(1);
    dynamoe::MoELayer layer(dynamoe::MoEOptions(a.d_model, a.d_hidden, a.experts).top_k(a.top_k), g.ep);
    layer->set_placement("none");
    if (i == 0)
      layer->set_schedule("sequential");
    else
      layer->set_schedule("overlap", a.group_size, degrees[i - 1]);
    layers.push_back(layer);
  }
  torch::manual_seed(100 + g.world_rank);
  const torch::Tensor x = torch::randn({a.tokens, a.d_model});
  const size_t n = layers.size() + 1;  // the last slot is communication alone
  std::vector<std::vector<double>> samples(n);
  std::vector<double> computes, stages(layers.size(), 0.0);
  for (int rep = -2; rep < a.reps; ++rep)  // two warm-up repetitions
    for (size_t i = 0; i < n; ++i) {
      const size_t k = (i + static_cast<size_t>(rep + 2)) % n;  // rotate who goes first
      double t = 0;
      if (k == layers.size()) {
        t = CommOnly(layers[0], a.d_model, g);
      } else {
        const auto [wall, waited] = Step(layers[k], x, g);
        t = wall;
        if (k == 0 && rep >= 0) computes.push_back(MaxOverRanks(g, wall - waited));
        if (rep >= 0) stages[k] += static_cast<double>(layers[k]->stats().pipeline_stages) / a.reps;
      }
      if (rep >= 0) samples[k].push_back(t);
    }
  std::vector<double> seconds;
  for (auto& v : samples) seconds.push_back(Median(v));
  const double compute = Median(computes);
  const double latency = MaxOverRanks(g, Latency(g));
  if (g.world_rank != 0) return 0;
  const double comm = seconds.back(), bound = std::max(comm, compute);
  std::printf("world %d: communication %.1f ms, compute %.1f ms (ratio %.2f), bound %.1f ms, latency %.0f us\n\n",
              g.world_size, comm * 1e3, compute * 1e3, comm / compute, bound * 1e3, latency * 1e6);
  std::printf("| schedule | stages | step ms | vs bound | vs sequential | predicted ms |\n|---|---|---|---|---|---|\n");
  for (size_t k = 0; k < layers.size(); ++k) {
    const double predicted = k == 0 ? comm + compute
                                    : dynamoe::placement::PipelineSeconds(comm, compute,
                                                                          static_cast<int64_t>(stages[k] + 0.5),
                                                                          2 * latency);
    std::printf("| %s | %.1f | %.1f | %.2f | %.2f | %.1f |\n", layers[k]->schedule().c_str(), stages[k],
                seconds[k] * 1e3, seconds[k] / bound, seconds[k] / seconds[0], predicted * 1e3);
  }
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = Parse(argc, argv);
  if (std::getenv("RANK")) {
    auto g = dynamoe::ValueOrThrow(dynamoe::runtime::InitFromEnv());
    return Measure(a, *g);
  }
  std::printf("bench_overlap: CPU processes (Gloo), %d tokens per rank, d_model %d, d_hidden %d, %d experts, "
              "top-%d, fp32, balanced routing, group size %d; median of %d repetitions, schedules interleaved\n\n",
              a.tokens, a.d_model, a.d_hidden, a.experts, a.top_k, a.group_size, a.reps);
  std::fflush(stdout);
  for (int world : Ints(a.worlds)) {
    dynamoe::tools::LaunchOptions opts;
    opts.timeout_s = 900;
    opts.env = {{"DYNAMOE_LOG_LEVEL", "warning"}, {"OMP_NUM_THREADS", "1"}};
    const auto results =
        dynamoe::tools::LaunchLocal(dynamoe::tools::SelfExecutable(), std::vector<std::string>(argv + 1, argv + argc),
                                    world, opts);
    for (size_t r = 0; r < results.size(); ++r)
      if (results[r].exit_code != 0) {
        std::cerr << "world " << world << " rank " << r << " failed (exit " << results[r].exit_code << "):\n"
                  << results[r].err;
        return 1;
      }
    std::cout << results[0].out << std::flush;
  }
  return 0;
}
