#include "scheduler/functions.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/kernels.h"
#include "scheduler/tensor_util.h"

namespace dynamoe::scheduler {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor Assignments(const at::Tensor& position, int64_t num_rows) {
  at::Tensor assignment = at::empty({num_rows}, position.options());
  ThrowIfError(kernels::InvertPositions(Ptr<int64_t>(position), position.numel(), num_rows,
                                        Ptr<int64_t>(assignment)));
  return assignment;
}

// out[t] = sum_j weight[t,j] * rows[position[t,j]]; weight may be undefined (= 1).
at::Tensor CombineImpl(const at::Tensor& rows, const at::Tensor& weight, const at::Tensor& position) {
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

class DispatchFunction : public torch::autograd::Function<DispatchFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& position,
                            int64_t num_rows) {
    const at::Tensor assignment = Assignments(position, num_rows);
    const at::Tensor token = at::div(assignment, position.size(1), "floor");
    const int64_t d = x.size(1);
    at::Tensor rows = at::empty({num_rows, d}, x.options());
    DispatchDataType(x.scalar_type(), "dispatch", [&](auto t_tag, auto) {
      using T = decltype(t_tag);
      ParallelRows(num_rows, d, [&](int64_t b, int64_t e) {
        kernels::GatherRows<T>(Ptr<T>(x), Ptr<int64_t>(token), d, Ptr<T>(rows), b, e);
      });
    });
    ctx->save_for_backward({position});
    return rows;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const at::Tensor position = ctx->get_saved_variables()[0];
    return {CombineImpl(grad[0].contiguous(), at::Tensor(), position), at::Tensor(), at::Tensor()};
  }
};

class CombineFunction : public torch::autograd::Function<CombineFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& rows, const at::Tensor& weight,
                            const at::Tensor& position) {
    ctx->save_for_backward({rows, weight, position});
    return CombineImpl(rows, weight, position);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &rows = saved[0], &weight = saved[1], &position = saved[2];
    const at::Tensor g = grad[0].contiguous();
    const int64_t num_tokens = position.size(0), num_rows = rows.size(0), d = rows.size(1);
    const int top_k = static_cast<int>(position.size(1));
    const at::Tensor assignment = Assignments(position, num_rows);
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
    return {grad_rows, grad_weight, at::Tensor()};
  }
};

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

// Torch 1.13's custom functions reject undefined inputs: absent optional
// parameters travel as empty tensors instead.
bool Present(const at::Tensor& t) { return t.defined() && t.numel() > 0; }

class ExpertFFNFunction : public torch::autograd::Function<ExpertFFNFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& rows, const at::Tensor& kept_counts,
                            const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& w3,
                            const at::Tensor& b1, const at::Tensor& b2, const std::string& activation) {
    const int64_t num_experts = w1.size(0), d_hidden = w1.size(2), d_model = w1.size(1);
    const int64_t num_rows = rows.size(0);
    at::Tensor h = at::empty({num_rows, d_hidden}, rows.options());
    at::Tensor g = Present(w3) ? at::empty({num_rows, d_hidden}, rows.options()) : at::Tensor();
    const int64_t* counts = Ptr<int64_t>(kept_counts);
    for (int64_t e = 0, off = 0; e < num_experts; off += counts[e], ++e) {
      if (counts[e] == 0) continue;
      const at::Tensor x_e = rows.narrow(0, off, counts[e]);
      at::Tensor h_e = h.narrow(0, off, counts[e]);
      at::mm_out(h_e, x_e, w1[e]);
      if (Present(b1)) h_e.add_(b1[e]);
      if (g.defined()) {
        at::Tensor g_e = g.narrow(0, off, counts[e]);
        at::mm_out(g_e, x_e, w3[e]);
      }
    }
    at::Tensor a = Activate(h, activation);
    if (g.defined()) a.mul_(g);
    at::Tensor y = at::empty({num_rows, d_model}, rows.options());
    for (int64_t e = 0, off = 0; e < num_experts; off += counts[e], ++e) {
      if (counts[e] == 0) continue;
      at::Tensor y_e = y.narrow(0, off, counts[e]);
      at::mm_out(y_e, a.narrow(0, off, counts[e]), w2[e]);
      if (Present(b2)) y_e.add_(b2[e]);
    }
    ctx->save_for_backward({rows, kept_counts, w1, w2, w3, h, g});
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["has_b1"] = Present(b1);
    ctx->saved_data["has_b2"] = Present(b2);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor &rows = s[0], &kept_counts = s[1], &w1 = s[2], &w2 = s[3], &w3 = s[4], &h = s[5],
                     &g = s[6];
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const at::Tensor gy = grad[0].contiguous();
    const int64_t num_experts = w1.size(0);
    const int64_t* counts = Ptr<int64_t>(kept_counts);

    const at::Tensor act = Activate(h, activation);
    const at::Tensor a = g.defined() ? act * g : act;
    at::Tensor grad_a = at::empty_like(h);
    at::Tensor gw2 = at::zeros_like(w2);
    at::Tensor gb2 = ctx->saved_data["has_b2"].toBool() ? at::zeros({num_experts, w2.size(2)}, w2.options()) : at::Tensor();
    for (int64_t e = 0, off = 0; e < num_experts; off += counts[e], ++e) {
      if (counts[e] == 0) continue;
      const at::Tensor gy_e = gy.narrow(0, off, counts[e]);
      at::Tensor grad_a_e = grad_a.narrow(0, off, counts[e]);
      at::mm_out(grad_a_e, gy_e, w2[e].t());
      at::Tensor gw2_e = gw2[e];
      at::mm_out(gw2_e, a.narrow(0, off, counts[e]).t(), gy_e);
      if (gb2.defined()) gb2[e].copy_(gy_e.sum(0));
    }
    // Through the (gated) activation.
    at::Tensor grad_g;
    at::Tensor grad_h;
    if (g.defined()) {
      grad_g = grad_a * act;
      grad_h = ActivationBackward(grad_a * g, h, activation);
    } else {
      grad_h = ActivationBackward(grad_a, h, activation);
    }
    at::Tensor grad_rows = at::empty_like(rows);
    at::Tensor gw1 = at::zeros_like(w1);
    at::Tensor gw3 = Present(w3) ? at::zeros_like(w3) : at::Tensor();
    at::Tensor gb1 = ctx->saved_data["has_b1"].toBool() ? at::zeros({num_experts, w1.size(2)}, w1.options()) : at::Tensor();
    for (int64_t e = 0, off = 0; e < num_experts; off += counts[e], ++e) {
      if (counts[e] == 0) continue;
      const at::Tensor x_e = rows.narrow(0, off, counts[e]);
      const at::Tensor gh_e = grad_h.narrow(0, off, counts[e]);
      at::Tensor gx_e = grad_rows.narrow(0, off, counts[e]);
      at::Tensor gw1_e = gw1[e];
      at::mm_out(gw1_e, x_e.t(), gh_e);
      at::mm_out(gx_e, gh_e, w1[e].t());
      if (gb1.defined()) gb1[e].copy_(gh_e.sum(0));
      if (gw3.defined()) {
        const at::Tensor gg_e = grad_g.narrow(0, off, counts[e]);
        at::Tensor gw3_e = gw3[e];
        at::mm_out(gw3_e, x_e.t(), gg_e);
        gx_e.addmm_(gg_e, w3[e].t());
      }
    }
    return {grad_rows, at::Tensor(), gw1, gw2, gw3, gb1, gb2, at::Tensor()};
  }
};

}  // namespace

at::Tensor Dispatch(const at::Tensor& x, const at::Tensor& position, int64_t num_rows) {
  return DispatchFunction::apply(x.contiguous(), position.contiguous(), num_rows);
}

at::Tensor Combine(const at::Tensor& rows, const at::Tensor& weight, const at::Tensor& position) {
  return CombineFunction::apply(rows.contiguous(), weight.contiguous(), position.contiguous());
}

at::Tensor ExpertFFN(const at::Tensor& rows, const at::Tensor& kept_counts, const ExpertParams& p) {
  auto c = [&](const at::Tensor& t) { return t.defined() ? t.contiguous() : at::empty({0}, rows.options()); };
  return ExpertFFNFunction::apply(rows.contiguous(), kept_counts.contiguous(), c(p.w1), c(p.w2), c(p.w3),
                                  c(p.b1), c(p.b2), p.activation);
}

}  // namespace dynamoe::scheduler
