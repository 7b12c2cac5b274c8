// DeviceOps on the CPU: the pointer kernels of kernels/ over ATen's
// intra-op threads, and one ATen GEMM per expert.
#include <ATen/ATen.h>

#include "common/status.h"
#include "kernels/kernels.h"
#include "scheduler/cpu_ops.h"
#include "scheduler/tensor_util.h"

namespace dynamoe::scheduler {

at::Tensor Activate(const at::Tensor& h, kernels::Activation activation) {
  switch (activation) {
    case kernels::Activation::kRelu: return at::relu(h);
    case kernels::Activation::kSilu: return at::silu(h);
    case kernels::Activation::kGelu: break;
  }
  return at::gelu(h);
}

namespace {

at::Tensor ActivateBackward(const at::Tensor& grad, const at::Tensor& h, kernels::Activation activation) {
  switch (activation) {
    case kernels::Activation::kRelu: return at::threshold_backward(grad, h, 0);
    case kernels::Activation::kSilu: return at::silu_backward(grad, h);
    case kernels::Activation::kGelu: break;
  }
  return at::gelu_backward(grad, h);
}

// acc += a b, in acc's dtype (which may be wider than a's).
void AddProduct(at::Tensor acc, const at::Tensor& a, const at::Tensor& b) {
  if (acc.scalar_type() == a.scalar_type())
    acc.addmm_(a, b);
  else
    acc.add_(at::mm(a, b));
}

class Cpu final : public DeviceOps {
 public:
  absl::StatusOr<Routing> Route(const at::Tensor& x, const at::Tensor& gate_weight, const at::Tensor& gate_bias,
                                const at::Tensor& expert_bias, const RouterOptions& options) const override {
    return RouteOnCpu(x, gate_weight, gate_bias, expert_bias, options);
  }

  at::Tensor Assignments(const at::Tensor& position, int64_t num_rows) const override {
    at::Tensor assignment = at::empty({num_rows}, position.options());
    ThrowIfError(kernels::InvertPositions(Ptr<int64_t>(position), position.numel(), num_rows,
                                          Ptr<int64_t>(assignment)));
    return assignment;
  }

  at::Tensor GatherRows(const at::Tensor& x, const at::Tensor& assignment, int64_t top_k) const override {
    const at::Tensor token = at::div(assignment, top_k, "floor");
    const int64_t num_rows = assignment.numel(), d = x.size(1);
    at::Tensor rows = at::empty({num_rows, d}, x.options());
    DispatchDataType(x.scalar_type(), "dispatch", [&](auto t_tag, auto) {
      using T = decltype(t_tag);
      ParallelRows(num_rows, d, [&](int64_t b, int64_t e) {
        kernels::GatherRows<T>(Ptr<T>(x), Ptr<int64_t>(token), d, Ptr<T>(rows), b, e);
      });
    });
    return rows;
  }

  at::Tensor CombineRows(const at::Tensor& rows, const at::Tensor& weight, const at::Tensor& position) const override {
    const int64_t num_tokens = position.size(0), d = rows.size(1);
    const int top_k = static_cast<int>(position.size(1));
    at::Tensor out = at::empty({num_tokens, d}, rows.options());
    DispatchDataType(rows.scalar_type(), "combine", [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      const W* w = weight.defined() ? Ptr<W>(weight) : nullptr;
      ParallelRows(num_tokens, d * top_k, [&](int64_t b, int64_t e) {
        kernels::CombineRows<T, W>(Ptr<T>(rows), Ptr<int64_t>(position), w, top_k, d, Ptr<T>(out), b, e);
      });
    });
    return out;
  }

  CombineGrads CombineBackward(const at::Tensor& g, const at::Tensor& rows, const at::Tensor& weight,
                               const at::Tensor& position, const at::Tensor& assignment) const override {
    const int64_t num_tokens = position.size(0), num_rows = rows.size(0), d = rows.size(1);
    const int top_k = static_cast<int>(position.size(1));
    at::Tensor grad_rows = at::empty_like(rows);
    at::Tensor grad_weight = at::empty_like(weight);
    DispatchDataType(rows.scalar_type(), "combine backward", [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      ParallelRows(num_rows, d, [&](int64_t b, int64_t e) {
        kernels::ScatterWeightedRows<T, W>(Ptr<T>(g), Ptr<int64_t>(assignment), Ptr<W>(weight), top_k, d,
                                           Ptr<T>(grad_rows), b, e);
      });
      ParallelRows(num_tokens, d * top_k, [&](int64_t b, int64_t e) {
        kernels::CombineWeightGrad<T, W>(Ptr<T>(g), Ptr<T>(rows), Ptr<int64_t>(position), top_k, d,
                                         Ptr<W>(grad_weight), b, e);
      });
    });
    return {grad_rows, grad_weight};
  }

  at::Tensor SlotProduct(const at::Tensor& a, const at::Tensor& w, const int64_t* counts) const override {
    at::Tensor out = at::empty({a.size(0), w.size(2)}, a.options());
    ForEachSlot(w.size(0), counts, [&](int64_t k, int64_t off, int64_t m) {
      at::Tensor out_k = out.narrow(0, off, m);
      at::mm_out(out_k, a.narrow(0, off, m), w[k]);
    });
    return out;
  }

  void SlotProductT(const at::Tensor& a, const at::Tensor& w, const int64_t* counts, at::Tensor& out,
                    bool accumulate) const override {
    if (!accumulate) out = at::empty({a.size(0), w.size(1)}, a.options());
    ForEachSlot(w.size(0), counts, [&](int64_t k, int64_t off, int64_t m) {
      at::Tensor out_k = out.narrow(0, off, m);
      if (accumulate) out_k.addmm_(a.narrow(0, off, m), w[k].t());
      else at::mm_out(out_k, a.narrow(0, off, m), w[k].t());
    });
  }

  void AddSlotOuter(const at::Tensor& a, const at::Tensor& b, const int64_t* counts, at::Tensor& acc, bool,
                    const at::Tensor&) const override {
    // The CPU sums start from zeros (MakesFreshSums() is false), fresh or not.
    ForEachSlot(acc.size(0), counts, [&](int64_t k, int64_t off, int64_t m) {
      AddProduct(acc[k], a.narrow(0, off, m).t(), b.narrow(0, off, m));
    });
  }

  bool MakesFreshSums() const override { return false; }

  at::Tensor ActivationForward(const at::Tensor& h, const at::Tensor& g, kernels::Activation activation) const override {
    at::Tensor a = Activate(h, activation);
    if (g.defined()) a.mul_(g);
    return a;
  }

  ActivationGrads ActivationBackward(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& g,
                                     kernels::Activation activation) const override {
    const at::Tensor act = Activate(h, activation);
    if (!g.defined()) return {ActivateBackward(grad_a, h, activation), at::Tensor(), act};
    return {ActivateBackward(grad_a * g, h, activation), grad_a * act, act * g};
  }
};

}  // namespace

const DeviceOps& CpuOps() {
  static const Cpu ops;
  return ops;
}

}  // namespace dynamoe::scheduler
