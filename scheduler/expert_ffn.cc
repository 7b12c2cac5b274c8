#include "scheduler/expert_ffn.h"

#include <ATen/ATen.h>

namespace dynamoe::scheduler {
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

}  // namespace

bool Present(const at::Tensor& t) { return t.defined() && t.numel() > 0; }

at::Tensor FFNForward(const at::Tensor& rows, const int64_t* counts, const ExpertParams& p, FFNActivations* saved) {
  const int64_t slots = p.w1.size(0), d_hidden = p.w1.size(2), d_model = p.w1.size(1);
  const int64_t n = rows.size(0);
  at::Tensor h = at::empty({n, d_hidden}, rows.options());
  at::Tensor g = Present(p.w3) ? at::empty({n, d_hidden}, rows.options()) : at::Tensor();
  ForEachSlot(slots, counts, [&](int64_t k, int64_t off, int64_t m) {
    const at::Tensor x_k = rows.narrow(0, off, m);
    at::Tensor h_k = h.narrow(0, off, m);
    at::mm_out(h_k, x_k, p.w1[k]);
    if (Present(p.b1)) h_k.add_(p.b1[k]);
    if (g.defined()) {
      at::Tensor g_k = g.narrow(0, off, m);
      at::mm_out(g_k, x_k, p.w3[k]);
    }
  });
  at::Tensor a = Activate(h, p.activation);
  if (g.defined()) a.mul_(g);
  at::Tensor y = at::empty({n, d_model}, rows.options());
  ForEachSlot(slots, counts, [&](int64_t k, int64_t off, int64_t m) {
    at::Tensor y_k = y.narrow(0, off, m);
    at::mm_out(y_k, a.narrow(0, off, m), p.w2[k]);
    if (Present(p.b2)) y_k.add_(p.b2[k]);
  });
  if (saved != nullptr) *saved = {h, g};
  return y;
}

FFNGrads ZeroGrads(const ExpertParams& p, bool wide) {
  auto zeros = [&](const at::Tensor& t) {
    if (!Present(t)) return at::Tensor();
    const bool half = t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
    return at::zeros_like(t, t.options().dtype(wide && half ? at::kFloat : t.scalar_type()));
  };
  return {zeros(p.w1), zeros(p.w2), zeros(p.w3), zeros(p.b1), zeros(p.b2)};
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
  const int64_t slots = p.w1.size(0);
  const at::Tensor gy = grad_y.contiguous();
  const at::Tensor act = Activate(saved.h, p.activation);
  const at::Tensor a = saved.g.defined() ? act * saved.g : act;
  at::Tensor grad_a = at::empty_like(saved.h);
  ForEachSlot(slots, counts, [&](int64_t k, int64_t off, int64_t m) {
    const at::Tensor gy_k = gy.narrow(0, off, m);
    at::Tensor grad_a_k = grad_a.narrow(0, off, m);
    at::mm_out(grad_a_k, gy_k, p.w2[k].t());
    AddProduct(grads.w2[k], a.narrow(0, off, m).t(), gy_k);
    if (grads.b2.defined()) grads.b2[k].add_(gy_k.sum(0));
  });
  // Through the (gated) activation.
  at::Tensor grad_g, grad_h;
  if (saved.g.defined()) {
    grad_g = grad_a * act;
    grad_h = ActivationBackward(grad_a * saved.g, saved.h, p.activation);
  } else {
    grad_h = ActivationBackward(grad_a, saved.h, p.activation);
  }
  at::Tensor grad_rows = at::empty_like(rows);
  ForEachSlot(slots, counts, [&](int64_t k, int64_t off, int64_t m) {
    const at::Tensor x_k = rows.narrow(0, off, m);
    const at::Tensor gh_k = grad_h.narrow(0, off, m);
    at::Tensor gx_k = grad_rows.narrow(0, off, m);
    AddProduct(grads.w1[k], x_k.t(), gh_k);
    at::mm_out(gx_k, gh_k, p.w1[k].t());
    if (grads.b1.defined()) grads.b1[k].add_(gh_k.sum(0));
    if (grads.w3.defined()) {
      const at::Tensor gg_k = grad_g.narrow(0, off, m);
      AddProduct(grads.w3[k], x_k.t(), gg_k);
      gx_k.addmm_(gg_k, p.w3[k].t());
    }
  });
  return grad_rows;
}

}  // namespace dynamoe::scheduler
