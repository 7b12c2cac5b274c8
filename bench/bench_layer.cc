// Forward + backward of the dynamoe layer vs a naive per-expert loop
// (MixtralKit style: mask, index, expert, index_add) vs a dense MLP with the
// same expert FLOPs (the practical limit), on CPU. The variants run
// interleaved, round by round, and the median of each is reported, so machine
// noise hits all three alike.
//
//   bench_layer [--rounds 7]
#include <torch/nn/functional/activation.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>

#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "bindings/moe_layer.h"

namespace {

using torch::Tensor;

using dynamoe::bench::Median;
using dynamoe::bench::Seconds;

// Naive layer with the same weights and routing semantics (dropless).
Tensor NaiveLoop(const dynamoe::MoELayerImpl& m, const Tensor& x) {
  const int64_t k = m.options.top_k(), E = m.options.num_experts();
  const Tensor scores = torch::softmax(torch::mm(x, m.gate->weight.t()), -1);
  auto top = torch::topk(scores, k, -1);
  Tensor w = std::get<0>(top);
  w = w / w.sum(-1, true);
  const Tensor idx = std::get<1>(top);
  Tensor y = torch::zeros_like(x);
  for (int64_t e = 0; e < E; ++e) {
    const Tensor hit = torch::nonzero(idx == e);
    if (hit.size(0) == 0) continue;
    const Tensor token = hit.select(1, 0), slot = hit.select(1, 1);
    const Tensor h = torch::gelu(torch::mm(x.index_select(0, token), m.w1[e]));
    const Tensor out = torch::mm(h, m.w2[e]) * w.index({token, slot}).unsqueeze(1);
    y = y.index_add(0, token, out);
  }
  return y;
}

void RunShape(int64_t tokens, int64_t d_model, int64_t d_hidden, int64_t experts, int64_t top_k, int rounds) {
  torch::manual_seed(0);
  dynamoe::MoELayer moe(dynamoe::MoEOptions(d_model, d_hidden, experts).top_k(top_k).name("bench"));
  // Dense MLP of the same expert FLOPs: hidden width top_k * d_hidden.
  const Tensor dw1 = torch::randn({d_model, top_k * d_hidden}).mul_(0.02).requires_grad_();
  const Tensor dw2 = torch::randn({top_k * d_hidden, d_model}).mul_(0.02).requires_grad_();
  const Tensor x = torch::randn({tokens, d_model}, torch::requires_grad());

  auto run_dynamoe = [&] { moe->forward(x).sum().backward(); };
  auto run_naive = [&] { NaiveLoop(*moe, x).sum().backward(); };
  auto run_dense = [&] { torch::mm(torch::gelu(torch::mm(x, dw1)), dw2).sum().backward(); };
  // Same outputs, or the comparison means nothing.
  {
    torch::NoGradGuard g;
    const Tensor a = moe->forward(x), b = NaiveLoop(*moe, x);
    if (!torch::allclose(a, b, 1e-4, 1e-5)) {
      std::cerr << "bench_layer: dynamoe and the naive loop disagree; max diff " << (a - b).abs().max().item<double>()
                << "\n";
      std::exit(1);
    }
  }
  run_dynamoe(), run_naive(), run_dense();  // warm-up
  std::vector<double> t_dyn, t_naive, t_dense;
  for (int r = 0; r < rounds; ++r) {
    t_dyn.push_back(Seconds(run_dynamoe));
    t_naive.push_back(Seconds(run_naive));
    t_dense.push_back(Seconds(run_dense));
  }
  const double dyn = Median(t_dyn), naive = Median(t_naive), dense = Median(t_dense);
  const double flops = 3.0 * 2.0 * 2.0 * tokens * top_k * d_model * d_hidden;  // fwd + 2x bwd, two GEMMs
  std::cout << absl::StrFormat(
      "tokens %lld d_model %lld d_hidden %lld experts %lld top-%lld | fwd+bwd median of %d: dynamoe %.1f ms, "
      "naive loop %.1f ms, dense MLP %.1f ms | dense/dynamoe %.2f (1.0 = dense speed), naive/dynamoe %.2f | "
      "dynamoe %.1f GFLOP/s\n",
      static_cast<long long>(tokens), static_cast<long long>(d_model), static_cast<long long>(d_hidden),
      static_cast<long long>(experts), static_cast<long long>(top_k), rounds, dyn * 1e3, naive * 1e3, dense * 1e3,
      dense / dyn, naive / dyn, flops / dyn / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 7;
  if (argc == 3 && !std::strcmp(argv[1], "--rounds")) rounds = std::max(1, std::atoi(argv[2]));
  else if (argc != 1) {
    std::cerr << "usage: bench_layer [--rounds N]\n";
    return 2;
  }
  std::cout << "bench_layer: CPU, fp32, " << torch::get_num_threads() << " intra-op threads\n";
  RunShape(4096, 256, 512, 8, 2, rounds);    // few large experts (Mixtral-like ratio)
  RunShape(4096, 256, 128, 32, 4, rounds);   // many small experts (OLMoE-like ratio)
  return 0;
}
