#include "scheduler/expert_ffn.h"

#include <atomic>

#include <ATen/ATen.h>

#ifdef DYNAMOE_TORCH_CUDA
#include "scheduler/cuda_path.h"
#endif

namespace dynamoe::scheduler {

namespace {
// -1: the setting's; else a GemmAlgorithm. Atomic: backward runs on autograd threads.
std::atomic<int> gemm_override{-1};
}  // namespace

runtime::GemmAlgorithm GemmAlgorithmInUse() {
  const int o = gemm_override.load(std::memory_order_relaxed);
  return o < 0 ? runtime::GlobalSettings().grouped_gemm : static_cast<runtime::GemmAlgorithm>(o);
}

void SetGemmAlgorithm(runtime::GemmAlgorithm algorithm) {
  gemm_override.store(static_cast<int>(algorithm), std::memory_order_relaxed);
}
namespace {

at::Tensor Activate(const at::Tensor& h, const std::string& activation) {
  if (activation == "relu") return at::relu(h);
  if (activation == "silu") return at::silu(h);
  return at::gelu(h);
}

at::Tensor ActivationBackward(const at::Tensor& grad, const at::Tensor& h, const std::string& activation) {
  if (activation == "relu") return at::threshold_backward(grad, h, 0);
  if (activation == "silu") return at::silu_backward(grad, h);
  return at::gelu_backward(grad, h);
}

// Calls fn(slot, offset, rows) for each slot with rows.
template <typename Fn>
void ForEachSlot(int64_t slots, const int64_t* counts, Fn&& fn) {
  for (int64_t k = 0, off = 0; k < slots; off += counts[k], ++k)
    if (counts[k] > 0) fn(k, off, counts[k]);
}

// acc += a b, in acc's dtype (which may be wider than a's).
void AddProduct(at::Tensor acc, const at::Tensor& a, const at::Tensor& b) {
  if (acc.scalar_type() == a.scalar_type())
    acc.addmm_(a, b);
  else
    acc.add_(at::mm(a, b));
}

// The three per-expert products of the FFN over expert-sorted rows. On CUDA
// they are the grouped GEMMs of kernels/cuda (one call sequence per product);
// on the CPU one ATen GEMM per expert.
bool Grouped(const at::Tensor& t) {
#ifdef DYNAMOE_TORCH_CUDA
  return t.is_cuda();
#else
  (void)t;
  return false;
#endif
}

// out[rows of k] = a[rows of k] w[k]
at::Tensor SlotProduct(const at::Tensor& a, const at::Tensor& w, const int64_t* counts) {
#ifdef DYNAMOE_TORCH_CUDA
  if (Grouped(a)) return cuda_path::GroupedForward(a, w, counts);
#endif
  at::Tensor out = at::empty({a.size(0), w.size(2)}, a.options());
  ForEachSlot(w.size(0), counts, [&](int64_t k, int64_t off, int64_t m) {
    at::Tensor out_k = out.narrow(0, off, m);
    at::mm_out(out_k, a.narrow(0, off, m), w[k]);
  });
  return out;
}

// out[rows of k] (+)= a[rows of k] w[k]^T
void SlotProductT(const at::Tensor& a, const at::Tensor& w, const int64_t* counts, at::Tensor& out, bool accumulate) {
#ifdef DYNAMOE_TORCH_CUDA
  if (Grouped(a)) {
    at::Tensor r = cuda_path::GroupedDataGrad(a, w, counts);
    if (accumulate) out.add_(r);
    else out = r;
    return;
  }
#endif
  if (!accumulate) out = at::empty({a.size(0), w.size(1)}, a.options());
  ForEachSlot(w.size(0), counts, [&](int64_t k, int64_t off, int64_t m) {
    at::Tensor out_k = out.narrow(0, off, m);
    if (accumulate) out_k.addmm_(a.narrow(0, off, m), w[k].t());
    else at::mm_out(out_k, a.narrow(0, off, m), w[k].t());
  });
}

// acc[k] += a[rows of k]^T b[rows of k]. Fresh on CUDA: acc is allocated here,
// shaped like `param`, and written (acc[k] = ...), so it holds memory only
// from this point of the backward on.
void AddSlotOuter(const at::Tensor& a, const at::Tensor& b, const int64_t* counts, at::Tensor& acc, bool fresh,
                  const at::Tensor& param) {
#ifdef DYNAMOE_TORCH_CUDA
  if (Grouped(a)) {
    if (!acc.defined()) acc = at::empty_like(param);
    return cuda_path::GroupedWeightGrad(a, b, counts, acc, fresh);
  }
#endif
  (void)fresh, (void)param;  // the CPU sums start from zeros
  ForEachSlot(acc.size(0), counts, [&](int64_t k, int64_t off, int64_t m) {
    AddProduct(acc[k], a.narrow(0, off, m).t(), b.narrow(0, off, m));
  });
}

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
  at::Tensor h = SlotProduct(rows, p.w1, counts);
  if (Present(p.b1)) AddSlotBias(h, p.b1, counts);
  at::Tensor g = Present(p.w3) ? SlotProduct(rows, p.w3, counts) : at::Tensor();
  at::Tensor a;
#ifdef DYNAMOE_TORCH_CUDA
  if (Grouped(h)) a = cuda_path::ActivationForward(h, g, p.activation);
#endif
  if (!a.defined()) {
    a = Activate(h, p.activation);
    if (g.defined()) a.mul_(g);
  }
  at::Tensor y = SlotProduct(a, p.w2, counts);
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
    return weight && fresh && Grouped(t) ? at::Tensor() : at::zeros_like(t, options);
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
  at::Tensor grad_a;
  SlotProductT(gy, p.w2, counts, grad_a, false);
  // Through the (gated) activation; `a` is recomputed for the w2 gradient.
  at::Tensor a, grad_g, grad_h;
#ifdef DYNAMOE_TORCH_CUDA
  if (Grouped(gy)) {
    cuda_path::ActivationGrads r = cuda_path::ActivationBackward(grad_a, saved.h, saved.g, p.activation);
    grad_a.reset();  // its memory now holds grad_h
    a = std::move(r.a), grad_g = std::move(r.grad_g), grad_h = std::move(r.grad_h);
  }
#endif
  if (!a.defined()) {
    const at::Tensor act = Activate(saved.h, p.activation);
    a = saved.g.defined() ? act * saved.g : act;
    if (saved.g.defined()) {
      grad_g = grad_a * act;
      grad_h = ActivationBackward(grad_a * saved.g, saved.h, p.activation);
    } else {
      grad_h = ActivationBackward(grad_a, saved.h, p.activation);
    }
  }
  AddSlotOuter(a, gy, counts, grads.w2, fresh, p.w2);
  a.reset();
  if (grads.b2.defined()) AddSlotSums(gy, counts, grads.b2);
  at::Tensor grad_rows;
  AddSlotOuter(rows, grad_h, counts, grads.w1, fresh, p.w1);
  SlotProductT(grad_h, p.w1, counts, grad_rows, false);
  if (grads.b1.defined()) AddSlotSums(grad_h, counts, grads.b1);
  if (Present(p.w3)) {
    AddSlotOuter(rows, grad_g, counts, grads.w3, fresh, p.w3);
    SlotProductT(grad_g, p.w3, counts, grad_rows, true);
  }
  return grad_rows;
}

}  // namespace dynamoe::scheduler
