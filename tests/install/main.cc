// Builds a MoE layer from an installed dynamoe, runs one forward and backward,
// and checks them against the expert computed by hand. Exits 0 and prints
// "consumer: ok" when they agree.
#include <torch/torch.h>

#include <cstdio>

#include "bindings/moe_layer.h"

int main() {
  torch::manual_seed(0);
  // One expert, top-1: every token goes to it with gate weight softmax = 1,
  // so the layer must equal gelu(x w1) w2 exactly up to rounding.
  dynamoe::MoELayer moe(dynamoe::MoEOptions(/*d_model=*/8, /*d_hidden=*/16, /*num_experts=*/1).top_k(1));
  torch::Tensor x = torch::randn({6, 8}, torch::kFloat64);
  moe->to(torch::kFloat64);
  torch::Tensor y = moe->forward(x);
  torch::Tensor want = torch::gelu(x.matmul(moe->w1[0])).matmul(moe->w2[0]);
  if (y.sizes() != x.sizes() || !torch::allclose(y, want, 1e-12, 1e-12)) {
    std::fprintf(stderr, "consumer: forward differs from gelu(x w1) w2 (max diff %g)\n",
                 (y - want).abs().max().item<double>());
    return 1;
  }
  const int64_t routed = moe->stats().counts.sum().item<int64_t>();
  if (routed != x.size(0)) {
    std::fprintf(stderr, "consumer: counts sum to %lld, expected %lld tokens\n", static_cast<long long>(routed),
                 static_cast<long long>(x.size(0)));
    return 1;
  }
  y.sum().backward();
  if (!moe->w1.grad().defined() || moe->w1.grad().abs().sum().item<double>() == 0) {
    std::fprintf(stderr, "consumer: backward left w1 without a gradient\n");
    return 1;
  }
  std::printf("consumer: ok (y[0][0] = %.6f)\n", y[0][0].item<double>());
  return 0;
}
