// Custom experts (ExpertFactory) against a plain loop: an expert whose
// weights are a function of its global index only, so an expert computed in
// the place of another (a wrong `first_expert + e`) gives other numbers, and
// a per-token reference that knows nothing of the layer's dispatch.
#pragma once

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace dynamoe::testing {

// y = tanh(x w) + b, fp64, weights drawn from a generator seeded by `index`.
struct IndexedExpertImpl : torch::nn::Module {
  IndexedExpertImpl(int64_t index, int64_t d) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1000 + index);
    const auto f64 = torch::TensorOptions().dtype(torch::kDouble);
    w = register_parameter("w", at::randn({d, d}, gen, f64) / std::sqrt(static_cast<double>(d)));
    b = register_parameter("b", at::randn({d}, gen, f64));
  }
  torch::Tensor forward(const torch::Tensor& x) { return torch::tanh(torch::matmul(x, w)) + b; }
  torch::Tensor w, b;
};
TORCH_MODULE(IndexedExpert);

// The layer's dropless routing written out per token: softmax of x gate^T,
// the k highest scores (the lower index wins a tie), weights renormalised to
// sum 1 when k > 1; y[t] = sum_j w_tj * expert_{e_tj}(x[t]).
inline torch::Tensor PlainCustomMoE(const torch::Tensor& x, const torch::Tensor& gate_weight, int64_t k,
                                    std::vector<IndexedExpert>& experts) {
  const int64_t E = gate_weight.size(0);
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < x.size(0); ++t) {
    const torch::Tensor scores = torch::softmax(torch::mv(gate_weight, x[t]), 0);
    std::vector<int64_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return scores[a].item<double>() > scores[b].item<double>(); });
    torch::Tensor total = scores[order[0]] * 0;
    for (int64_t j = 0; j < k; ++j) total = total + scores[order[j]];
    torch::Tensor acc = torch::zeros({x.size(1)}, x.options());
    for (int64_t j = 0; j < k; ++j) {
      const torch::Tensor w = k > 1 ? scores[order[j]] / total : scores[order[j]];
      acc = acc + w * experts[order[j]]->forward(x[t].unsqueeze(0)).squeeze(0);
    }
    rows.push_back(acc);
  }
  return rows.empty() ? x * 0 : torch::stack(rows);
}

}  // namespace dynamoe::testing
