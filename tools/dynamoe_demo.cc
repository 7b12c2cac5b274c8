// dynamoe-demo: trains a small MoE regression model on inputs drawn from
// Zipf-skewed clusters, so the router's load becomes skewed. Prints the loss
// and a per-expert load bar every logging step. With --ranks N it starts N
// CPU processes (torchrun's variables, Gloo): experts are spread over the
// ranks, each rank trains on its own samples, and rank 0 prints the
// all-gathered count matrix's imbalance (max/mean) per expert and per rank.
//
//   dynamoe-demo [--ranks 1] [--steps 300] [--log-every 50] [--experts 8] [--top-k 2] [--seed 0]
//                [--batch 512] [--d-model 32] [--d-hidden 64]
#include <torch/nn/functional/loss.h>
#include <torch/optim/adam.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "absl/strings/str_format.h"
#include "bindings/gradients.h"
#include "common/status.h"
#include "bindings/moe_layer.h"
#include "monitor/load_report.h"
#include "placement/count_matrix.h"
#include "config/launch_env.h"
#include "runtime/rendezvous.h"
#include "tools/local_launch.h"

namespace {

struct Args {
  int steps = 300, log_every = 50, experts = 8, top_k = 2, seed = 0, batch = 512, ranks = 1;
  int d_model = 32, d_hidden = 64;  // small enough for 2 cores; larger for calibration runs
};

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    auto next = [&](const char* flag) {
      if (i + 1 >= argc) {
        std::cerr << "dynamoe-demo: " << flag << " needs a value\n";
        std::exit(2);
      }
      return std::atoi(argv[++i]);
    };
    if (!std::strcmp(argv[i], "--steps")) a.steps = next("--steps");
    else if (!std::strcmp(argv[i], "--log-every")) a.log_every = next("--log-every");
    else if (!std::strcmp(argv[i], "--experts")) a.experts = next("--experts");
    else if (!std::strcmp(argv[i], "--top-k")) a.top_k = next("--top-k");
    else if (!std::strcmp(argv[i], "--seed")) a.seed = next("--seed");
    else if (!std::strcmp(argv[i], "--batch")) a.batch = next("--batch");
    else if (!std::strcmp(argv[i], "--ranks")) a.ranks = next("--ranks");
    else if (!std::strcmp(argv[i], "--d-model")) a.d_model = next("--d-model");
    else if (!std::strcmp(argv[i], "--d-hidden")) a.d_hidden = next("--d-hidden");
    else {
      std::cerr << "dynamoe-demo: unknown argument " << argv[i]
                << "\nusage: dynamoe-demo [--ranks N] [--steps N] [--log-every N] [--experts N] [--top-k N] [--seed N] [--batch N]\n"
                   "                    [--d-model N] [--d-hidden N]\n";
      std::exit(2);
    }
  }
  if (a.steps < 1 || a.log_every < 1 || a.experts < 1 || a.top_k < 1 || a.top_k > a.experts || a.batch < 1 ||
      a.ranks < 1 || a.d_model < 1 || a.d_hidden < 1 || a.experts % a.ranks != 0) {
    std::cerr << "dynamoe-demo: need steps, log-every, experts, batch, ranks, d-model, d-hidden >= 1, 1 <= top-k <= experts, and "
                 "ranks dividing experts\n";
    std::exit(2);
  }
  return a;
}

// Inputs from `num_clusters` clusters with Zipf(1.2) popularity; the target
// of each cluster is its own nonlinear map, so experts can specialise.
struct Task {
  torch::Tensor centers, maps, cluster_probs;
  torch::Tensor Sample(int64_t batch, torch::Tensor* y) const {
    const torch::Tensor cluster = torch::multinomial(cluster_probs, batch, /*replacement=*/true);
    const torch::Tensor x = centers.index_select(0, cluster) + 0.3 * torch::randn({batch, centers.size(1)});
    *y = torch::tanh(torch::bmm(x.unsqueeze(1), maps.index_select(0, cluster)).squeeze(1));
    return x;
  }
};

}  // namespace

// Starts args.ranks copies of this program; rank 0 prints.
int LaunchRanks(int argc, char** argv, const Args& args) {
  dynamoe::tools::LaunchOptions opts;
  opts.rank0_passthrough = true;
  opts.timeout_s = 3600;
  const auto results = dynamoe::tools::LaunchLocal(dynamoe::tools::SelfExecutable(), std::vector<std::string>(argv + 1, argv + argc), args.ranks, opts);
  for (size_t r = 0; r < results.size(); ++r)
    if (results[r].exit_code != 0) {
      std::cerr << "dynamoe-demo: rank " << r << " exited with " << results[r].exit_code << "\n" << results[r].err;
      return 1;
    }
  return 0;
}

int main(int argc, char** argv) {
  const Args args = Parse(argc, argv);
  if (args.ranks > 1 && !dynamoe::runtime::GlobalLaunchEnv().rank) return LaunchRanks(argc, argv, args);
  std::shared_ptr<dynamoe::runtime::ParallelGroups> groups;
  if (args.ranks > 1) groups = dynamoe::ValueOrThrow(dynamoe::runtime::InitFromEnv());
  const int rank = groups ? groups->world_rank : 0;
  torch::manual_seed(args.seed);
  const int64_t d_model = args.d_model, d_hidden = args.d_hidden, num_clusters = 16;
  Task task;
  task.centers = 2.0 * torch::randn({num_clusters, d_model});
  task.maps = torch::randn({num_clusters, d_model, d_model}) / std::sqrt(static_cast<double>(d_model));
  task.cluster_probs = torch::pow(torch::arange(1, num_clusters + 1, torch::kDouble), -1.2);

  dynamoe::MoELayer moe(dynamoe::MoEOptions(d_model, d_hidden, args.experts).top_k(args.top_k).name("demo"),
                        groups ? groups->ep : dynamoe::runtime::CommunicatorPtr());
  torch::optim::Adam optimizer(moe->parameters(), torch::optim::AdamOptions(3e-3));
  torch::manual_seed(args.seed + 1000 * (rank + 1));  // each rank samples its own batches
  if (rank == 0)
    std::cout << absl::StrFormat("dynamoe demo: %d experts, top-%d, d_model %d, batch %d per rank, %d rank%s, %d steps\n",
                                 args.experts, args.top_k, d_model, args.batch, args.ranks,
                                 args.ranks > 1 ? "s" : "", args.steps);
  const auto start = std::chrono::steady_clock::now();
  for (int step = 1; step <= args.steps; ++step) {
    torch::Tensor target;
    const torch::Tensor x = task.Sample(args.batch, &target);
    const torch::Tensor y = moe->forward(x);
    const torch::Tensor task_loss = torch::nn::functional::mse_loss(y, target);
    const torch::Tensor loss = task_loss + 0.01 * moe->aux_loss;
    optimizer.zero_grad();
    loss.backward();
    if (groups) dynamoe::ReduceGradients(*moe, *groups);
    optimizer.step();
    if (rank == 0 && (step % args.log_every == 0 || step == 1)) {
      const torch::Tensor counts = moe->stats().counts;
      auto matrix = dynamoe::placement::CountMatrix::Make(
          counts.size(0), counts.size(1),
          std::vector<int64_t>(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel()));
      const auto loads = matrix->ExpertLoads();
      std::cout << absl::StrFormat("step %4d  loss %.4f  aux %.3f  imbalance(max/mean) %.2f", step,
                                   task_loss.item<double>(), moe->aux_loss.item<double>(),
                                   dynamoe::placement::LoadImbalance(loads));
      if (groups) {  // what each rank's experts receive: the slowest rank sets the step time
        std::vector<int64_t> rank_loads(args.ranks, 0);
        for (size_t e = 0; e < loads.size(); ++e) rank_loads[e / (loads.size() / args.ranks)] += loads[e];
        std::cout << absl::StrFormat("  rank imbalance %.2f", dynamoe::placement::LoadImbalance(rank_loads));
      }
      std::cout << "\n" << dynamoe::monitor::LoadBars(loads);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (rank == 0) std::cout << absl::StrFormat("done: %d steps in %.1f s\n", args.steps, seconds);
  return 0;
}
