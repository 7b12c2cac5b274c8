// bench_ep: expert parallelism on CPU processes (Gloo). For world sizes 1, 2
// and 4 (one process per rank, started like torchrun), every rank trains the
// same layer shape on its own tokens; prints per-phase forward times, the
// backward time, the all-to-all bytes this rank sent to other ranks in the
// forward and in the backward (counted by the communicator, not derived from
// each other) and the share of the step spent waiting on collectives (forward
// and backward), averaged over ranks.
//
//   ./build/default/bench/bench_ep [--tokens 2048] [--steps 8] [--worlds 1,2,4]
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "bindings/moe_layer.h"
#include "common/status.h"
#include "runtime/rendezvous.h"
#include "tools/local_launch.h"

namespace {

struct Args {
  int tokens = 2048, steps = 8, d_model = 256, d_hidden = 512, experts = 16, top_k = 2;
  std::string worlds = "1,2,4";
};

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i], v = argv[i + 1];
    if (f == "--tokens") a.tokens = std::stoi(v);
    else if (f == "--steps") a.steps = std::stoi(v);
    else if (f == "--experts") a.experts = std::stoi(v);
    else if (f == "--worlds") a.worlds = v;
    else {
      std::cerr << "usage: bench_ep [--tokens N] [--steps N] [--experts N] [--worlds 1,2,4]\n";
      std::exit(2);
    }
  }
  return a;
}

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// One rank: prints (rank 0 only) a table row averaged over ranks.
int Rank(const Args& a) {
  auto g = dynamoe::ValueOrThrow(dynamoe::runtime::InitFromEnv());
  torch::manual_seed(1);
  dynamoe::MoELayer layer(dynamoe::MoEOptions(a.d_model, a.d_hidden, a.experts).top_k(a.top_k), g->ep);
  torch::manual_seed(100 + g->world_rank);
  // x needs a gradient, as inside a model (the layers below need it): the
  // backward then sends the input gradient back too, not only the expert one.
  torch::Tensor x = torch::randn({a.tokens, a.d_model}).requires_grad_();
  // [step, gate, count_allgather, dispatch, experts, combine, backward, comm wait,
  //  forward bytes sent, backward bytes sent]
  constexpr int kCols = 10;
  std::vector<double> sum(kCols, 0.0);
  for (int s = -2; s < a.steps; ++s) {  // two warm-up steps
    dynamoe::ThrowIfError(g->world->Barrier({"bench", "step"}));
    const auto c0 = g->ep->counters();
    const double t0 = Now();
    const torch::Tensor y = layer->forward(x);
    const double t1 = Now();
    const auto c1 = g->ep->counters();
    (y.square().mean() + layer->aux_loss).backward();
    const double t2 = Now();
    const auto c2 = g->ep->counters();
    x.mutable_grad() = torch::Tensor();
    if (s < 0) continue;
    const auto& st = layer->stats();
    const std::map<std::string, double> phase = st.phase_seconds();
    const double phases[] = {phase.count("gate") ? phase.at("gate") : 0,
                             phase.at("count_allgather"), phase.at("dispatch"),
                             phase.at("experts"), phase.at("combine")};
    sum[0] += t2 - t0;
    for (int i = 0; i < 5; ++i) sum[1 + i] += phases[i];
    sum[6] += t2 - t1;
    sum[7] += c2.wait_seconds - c0.wait_seconds;
    sum[8] += static_cast<double>(c1.bytes_sent - c0.bytes_sent);
    sum[9] += static_cast<double>(c2.bytes_sent - c1.bytes_sent);
  }
  at::Tensor mine = torch::tensor(sum, torch::kDouble) / a.steps;
  at::Tensor all = torch::empty({g->world_size * kCols}, torch::kDouble);
  dynamoe::ThrowIfError(g->world->AllGather(mine, all, {"bench", "report"}));
  if (g->world_rank == 0) {
    const at::Tensor m = all.view({g->world_size, kCols}).mean(0);
    const double* v = m.data_ptr<double>();
    std::printf("| %d | %.1f | %.1f | %.2f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %.0f%% |\n", g->world_size,
                v[0] * 1e3, v[1] * 1e3, v[2] * 1e3, v[3] * 1e3, v[4] * 1e3, v[5] * 1e3, v[6] * 1e3, v[8] / 1e6,
                v[9] / 1e6, 100.0 * v[7] / v[0]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = Parse(argc, argv);
  if (std::getenv("RANK")) return Rank(a);
  std::printf("bench_ep: %d tokens per rank, d_model %d, d_hidden %d, %d experts, top-%d, fp32, CPU/Gloo, "
              "forward + backward, mean of %d steps and of the ranks\n\n",
              a.tokens, a.d_model, a.d_hidden, a.experts, a.top_k, a.steps);
  std::printf("| world | step ms | gate | count all-gather | dispatch | experts | combine | backward | "
              "MB sent forward | MB sent backward | waiting on collectives |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  std::vector<std::string> args(argv + 1, argv + argc);
  std::stringstream worlds(a.worlds);
  for (std::string w; std::getline(worlds, w, ',');) {
    dynamoe::tools::LaunchOptions opts;
    opts.rank0_passthrough = true;
    opts.timeout_s = 600;
    opts.env = {{"DYNAMOE_LOG_LEVEL", "warning"}};
    const auto results = dynamoe::tools::LaunchLocal(dynamoe::tools::SelfExecutable(), args, std::stoi(w), opts);
    for (size_t r = 0; r < results.size(); ++r)
      if (results[r].exit_code != 0) {
        std::cerr << "rank " << r << " failed (exit " << results[r].exit_code << "):\n" << results[r].err;
        return 1;
      }
  }
  return 0;
}
