// dynamoe-demo: trains a small MoE regression model on inputs drawn from
// Zipf-skewed clusters, so the router's load becomes skewed. Prints the loss
// and a per-expert load bar every logging step.
//
//   dynamoe-demo [--steps 300] [--log-every 50] [--experts 8] [--top-k 2] [--seed 0]
#include <torch/nn/functional/loss.h>
#include <torch/optim/adam.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "absl/strings/str_format.h"
#include "bindings/moe_layer.h"
#include "monitor/load_report.h"
#include "placement/count_matrix.h"

namespace {

struct Args {
  int steps = 300, log_every = 50, experts = 8, top_k = 2, seed = 0, batch = 512;
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
    else {
      std::cerr << "dynamoe-demo: unknown argument " << argv[i]
                << "\nusage: dynamoe-demo [--steps N] [--log-every N] [--experts N] [--top-k N] [--seed N] [--batch N]\n";
      std::exit(2);
    }
  }
  if (a.steps < 1 || a.log_every < 1 || a.experts < 1 || a.top_k < 1 || a.top_k > a.experts || a.batch < 1) {
    std::cerr << "dynamoe-demo: need steps, log-every, experts, batch >= 1 and 1 <= top-k <= experts\n";
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

int main(int argc, char** argv) {
  const Args args = Parse(argc, argv);
  torch::manual_seed(args.seed);
  const int64_t d_model = 32, d_hidden = 64, num_clusters = 16;
  Task task;
  task.centers = 2.0 * torch::randn({num_clusters, d_model});
  task.maps = torch::randn({num_clusters, d_model, d_model}) / std::sqrt(static_cast<double>(d_model));
  task.cluster_probs = torch::pow(torch::arange(1, num_clusters + 1, torch::kDouble), -1.2);

  dynamoe::MoELayer moe(dynamoe::MoEOptions(d_model, d_hidden, args.experts).top_k(args.top_k).name("demo"));
  torch::optim::Adam optimizer(moe->parameters(), torch::optim::AdamOptions(3e-3));
  std::cout << absl::StrFormat("dynamoe demo: %d experts, top-%d, d_model %d, batch %d, %d steps\n", args.experts,
                               args.top_k, d_model, args.batch, args.steps);
  const auto start = std::chrono::steady_clock::now();
  for (int step = 1; step <= args.steps; ++step) {
    torch::Tensor target;
    const torch::Tensor x = task.Sample(args.batch, &target);
    const torch::Tensor y = moe->forward(x);
    const torch::Tensor task_loss = torch::nn::functional::mse_loss(y, target);
    const torch::Tensor loss = task_loss + 0.01 * moe->aux_loss;
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (step % args.log_every == 0 || step == 1) {
      const torch::Tensor counts = moe->stats().counts;
      auto matrix = dynamoe::placement::CountMatrix::Make(
          counts.size(0), counts.size(1),
          std::vector<int64_t>(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel()));
      const auto loads = matrix->ExpertLoads();
      std::cout << absl::StrFormat("step %4d  loss %.4f  aux %.3f  imbalance(max/mean) %.2f\n", step,
                                   task_loss.item<double>(), moe->aux_loss.item<double>(),
                                   dynamoe::placement::LoadImbalance(loads))
                << dynamoe::monitor::LoadBars(loads);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << absl::StrFormat("done: %d steps in %.1f s\n", args.steps, seconds);
  return 0;
}
