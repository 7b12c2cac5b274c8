// Forward + backward of the dynamoe layer vs a naive per-expert loop
// (MixtralKit style: mask, index, one Linear per expert, index_add) vs a
// dense MLP with the same expert FLOPs (the practical limit), on CPU. The
// variants run interleaved, round by round (rotating which goes first), and
// the median of each is reported, so machine noise hits all three alike.
//
//   bench_layer [--rounds 7]
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/linear.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "bindings/moe_layer.h"

namespace {

using torch::Tensor;

using dynamoe::bench::Median;
using dynamoe::bench::Seconds;

// The loop users write (MixtralKit style): one bias-free Linear per expert,
// each its own parameter, so each expert's backward makes only its own weight
// gradient. (Slicing one stacked weight, w1[e], would instead make every
// slice's backward build a full-size zero gradient of the stack: 1.1-2x
// slower, bench/README.md.) The weights are copies of the layer's; the gate is
// the layer's.
struct NaiveMoE {
  std::vector<torch::nn::Linear> w1, w2;

  explicit NaiveMoE(const dynamoe::MoELayerImpl& m) {
    torch::NoGradGuard g;
    const int64_t d = m.options.d_model(), h = m.options.d_hidden();
    for (int64_t e = 0; e < m.options.num_experts(); ++e) {
      w1.emplace_back(torch::nn::LinearOptions(d, h).bias(false));
      w2.emplace_back(torch::nn::LinearOptions(h, d).bias(false));
      w1.back()->weight.copy_(m.w1[e].t());  // Linear keeps [out, in]
      w2.back()->weight.copy_(m.w2[e].t());
    }
  }

  // Same routing semantics as the layer (dropless, renormalised top-k).
  Tensor Forward(const dynamoe::MoELayerImpl& m, const Tensor& x) {
    const int64_t k = m.options.top_k();
    const Tensor scores = torch::softmax(torch::nn::functional::linear(x, m.gate->weight), -1);
    auto top = torch::topk(scores, k, -1);
    Tensor w = std::get<0>(top);
    w = w / w.sum(-1, true);
    const Tensor idx = std::get<1>(top);
    Tensor y = torch::zeros_like(x);
    for (size_t e = 0; e < w1.size(); ++e) {
      const Tensor hit = torch::nonzero(idx == static_cast<int64_t>(e));
      if (hit.size(0) == 0) continue;
      const Tensor token = hit.select(1, 0), slot = hit.select(1, 1);
      const Tensor out = w2[e]->forward(torch::gelu(w1[e]->forward(x.index_select(0, token))));
      y = y.index_add(0, token, out * w.index({token, slot}).unsqueeze(1));
    }
    return y;
  }
};

void RunShape(int64_t tokens, int64_t d_model, int64_t d_hidden, int64_t experts, int64_t top_k, int rounds) {
  torch::manual_seed(0);
  dynamoe::MoELayer moe(dynamoe::MoEOptions(d_model, d_hidden, experts).top_k(top_k).name("bench"));
  // Dense MLP of the same expert FLOPs: hidden width top_k * d_hidden.
  const Tensor dw1 = torch::randn({d_model, top_k * d_hidden}).mul_(0.02).requires_grad_();
  const Tensor dw2 = torch::randn({top_k * d_hidden, d_model}).mul_(0.02).requires_grad_();
  const Tensor x = torch::randn({tokens, d_model}, torch::requires_grad());

  auto run_dynamoe = [&] { moe->forward(x).sum().backward(); };
  NaiveMoE naive_moe(*moe);
  auto run_naive = [&] { naive_moe.Forward(*moe, x).sum().backward(); };
  auto run_dense = [&] { torch::mm(torch::gelu(torch::mm(x, dw1)), dw2).sum().backward(); };
  // Same outputs, or the comparison means nothing.
  {
    torch::NoGradGuard g;
    const Tensor a = moe->forward(x), b = naive_moe.Forward(*moe, x);
    if (!torch::allclose(a, b, 1e-4, 1e-5)) {
      std::cerr << "bench_layer: dynamoe and the naive loop disagree; max diff " << (a - b).abs().max().item<double>()
                << "\n";
      std::exit(1);
    }
  }
  run_dynamoe(), run_naive(), run_dense();  // warm-up
  std::vector<double> t_dyn, t_naive, t_dense;
  for (int r = 0; r < rounds; ++r)  // rotate which variant goes first
    for (int i = 0; i < 3; ++i) switch ((i + r) % 3) {
        case 0: t_dyn.push_back(Seconds(run_dynamoe)); break;
        case 1: t_naive.push_back(Seconds(run_naive)); break;
        default: t_dense.push_back(Seconds(run_dense));
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
