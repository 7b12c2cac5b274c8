#include "scheduler/expert_ffn.h"

#include <atomic>

#include <ATen/ATen.h>

#include "scheduler/device_ops.h"
#include "scheduler/tensor_util.h"

namespace dynamoe::scheduler {

namespace {
// -1: the setting's; else a GemmAlgorithm. Atomic: backward runs on autograd threads.
std::atomic<int> gemm_override{-1};
}  // namespace

runtime::GemmAlgorithm GemmAlgorithmInUse() {
  const int o = gemm_override.load(std::memory_order_relaxed);
  return o < 0 ? runtime::GlobalSettings().grouped_gemm : static_cast<runtime::GemmAlgorithm>(o);
}

void SetGemmAlgorithm(std::optional<runtime::GemmAlgorithm> algorithm) {
  gemm_override.store(algorithm ? static_cast<int>(*algorithm) : -1, std::memory_order_relaxed);
}

namespace {

// out[rows of k] += bias[k]
void AddSlotBias(at::Tensor& out, const at::Tensor& bias, const int64_t* counts) {
  ForEachSlot(bias.size(0), counts, [&](int64_t k, int64_t off, int64_t m) { out.narrow(0, off, m).add_(bias[k]); });
}

// acc[k] += sum of rows of k
void AddSlotSums(const at::Tensor& g, const int64_t* counts, at::Tensor& acc) {
  ForEachSlot(acc.size(0), counts, [&](int64_t k, int64_t off, int64_t m) { acc[k].add_(g.narrow(0, off, m).sum(0)); });
}

}  // namespace

bool Present(const at::Tensor& t) { return t.defined() && t.numel() > 0; }

at::Tensor FFNForward(const at::Tensor& rows, const int64_t* counts, const ExpertParams& p, FFNActivations* saved) {
  const DeviceOps& ops = OpsFor(rows);
  at::Tensor h = ops.SlotProduct(rows, p.w1, counts);
  if (Present(p.b1)) AddSlotBias(h, p.b1, counts);
  at::Tensor g = Present(p.w3) ? ops.SlotProduct(rows, p.w3, counts) : at::Tensor();
  at::Tensor a = ops.ActivationForward(h, g, p.activation);
  at::Tensor y = ops.SlotProduct(a, p.w2, counts);
  if (Present(p.b2)) AddSlotBias(y, p.b2, counts);
  if (saved != nullptr) *saved = {h, g};
  return y;
}

FFNGrads ZeroGrads(const ExpertParams& p, bool wide, bool fresh) {
  auto make = [&](const at::Tensor& t, bool weight) {
    if (!Present(t)) return at::Tensor();
    const bool half = t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
    const auto options = t.options().dtype(wide && half ? at::kFloat : t.scalar_type());
    // Fresh CUDA weight sums are made by their first (and only) GEMM.
    return weight && fresh && OpsFor(t).MakesFreshSums() ? at::Tensor() : at::zeros_like(t, options);
  };
  FFNGrads g{make(p.w1, true), make(p.w2, true), make(p.w3, true), make(p.b1, false), make(p.b2, false)};
  g.fresh = fresh;
  return g;
}

FFNGrads Narrow(FFNGrads g, const ExpertParams& p) {
  const std::pair<at::Tensor*, const at::Tensor*> pairs[] = {
      {&g.w1, &p.w1}, {&g.w2, &p.w2}, {&g.w3, &p.w3}, {&g.b1, &p.b1}, {&g.b2, &p.b2}};
  for (const auto& [sum, param] : pairs)
    if (sum->defined()) *sum = sum->to(param->scalar_type());
  return g;
}

at::Tensor FFNBackward(const at::Tensor& grad_y, const at::Tensor& rows, const int64_t* counts,
                       const ExpertParams& p, const FFNActivations& saved, FFNGrads& grads) {
  const bool fresh = grads.fresh;
  grads.fresh = false;
  const at::Tensor gy = grad_y.contiguous();
  const DeviceOps& ops = OpsFor(gy);
  at::Tensor grad_a;
  ops.SlotProductT(gy, p.w2, counts, grad_a, false);
  // Through the (gated) activation; `a` is recomputed for the w2 gradient.
  DeviceOps::ActivationGrads r = ops.ActivationBackward(grad_a, saved.h, saved.g, p.activation);
  grad_a.reset();  // its memory may now hold grad_h
  at::Tensor a = std::move(r.a), grad_g = std::move(r.grad_g), grad_h = std::move(r.grad_h);
  ops.AddSlotOuter(a, gy, counts, grads.w2, fresh, p.w2);
  a.reset();
  if (grads.b2.defined()) AddSlotSums(gy, counts, grads.b2);
  at::Tensor grad_rows;
  ops.AddSlotOuter(rows, grad_h, counts, grads.w1, fresh, p.w1);
  ops.SlotProductT(grad_h, p.w1, counts, grad_rows, false);
  if (grads.b1.defined()) AddSlotSums(grad_h, counts, grads.b1);
  if (Present(p.w3)) {
    ops.AddSlotOuter(rows, grad_g, counts, grads.w3, fresh, p.w3);
    ops.SlotProductT(grad_g, p.w3, counts, grad_rows, true);
  }
  return grad_rows;
}

}  // namespace dynamoe::scheduler
