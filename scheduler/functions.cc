#include "scheduler/functions.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/kernels.h"
#include "scheduler/expert_ffn.h"
#include "scheduler/tensor_util.h"

#ifdef DYNAMOE_TORCH_CUDA
#include "scheduler/cuda_path.h"
#endif

namespace dynamoe::scheduler {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor Assignments(const at::Tensor& position, int64_t num_rows) {
#ifdef DYNAMOE_TORCH_CUDA
  if (position.is_cuda()) return cuda_path::Assignments(position, num_rows);
#endif
  at::Tensor assignment = at::empty({num_rows}, position.options());
  ThrowIfError(kernels::InvertPositions(Ptr<int64_t>(position), position.numel(), num_rows,
                                        Ptr<int64_t>(assignment)));
  return assignment;
}

// out[t] = sum_j weight[t,j] * rows[position[t,j]]; weight may be undefined (= 1).
at::Tensor CombineImpl(const at::Tensor& rows, const at::Tensor& weight, const at::Tensor& position) {
#ifdef DYNAMOE_TORCH_CUDA
  if (rows.is_cuda()) return cuda_path::CombineRows(rows, weight, position);
#endif
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
    ctx->save_for_backward({position});
#ifdef DYNAMOE_TORCH_CUDA
    if (x.is_cuda()) return cuda_path::GatherRows(x, assignment, position.size(1));
#endif
    const at::Tensor token = at::div(assignment, position.size(1), "floor");
    const int64_t d = x.size(1);
    at::Tensor rows = at::empty({num_rows, d}, x.options());
    DispatchDataType(x.scalar_type(), "dispatch", [&](auto t_tag, auto) {
      using T = decltype(t_tag);
      ParallelRows(num_rows, d, [&](int64_t b, int64_t e) {
        kernels::GatherRows<T>(Ptr<T>(x), Ptr<int64_t>(token), d, Ptr<T>(rows), b, e);
      });
    });
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
#ifdef DYNAMOE_TORCH_CUDA
    if (rows.is_cuda())
      return {cuda_path::ScatterWeightedRows(g, assignment, weight, top_k),
              cuda_path::CombineWeightGrad(g, rows, position, weight.scalar_type()), at::Tensor()};
#endif
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

class ExpertFFNFunction : public torch::autograd::Function<ExpertFFNFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& rows, const at::Tensor& kept_counts,
                            const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& w3,
                            const at::Tensor& b1, const at::Tensor& b2, const std::string& activation) {
    FFNActivations saved;
    const at::Tensor y = FFNForward(rows, Ptr<int64_t>(kept_counts), {w1, w2, w3, b1, b2, activation}, &saved);
    ctx->save_for_backward({rows, kept_counts, w1, w2, w3, b1, b2, saved.h, saved.g});
    ctx->saved_data["activation"] = activation;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto s = ctx->get_saved_variables();
    const ExpertParams params{s[2], s[3], s[4], s[5], s[6], ctx->saved_data["activation"].toStringRef()};
    FFNGrads grads = ZeroGrads(params, /*wide=*/false, /*fresh=*/true);
    const at::Tensor grad_rows = FFNBackward(grad[0], s[0], Ptr<int64_t>(s[1]), params, {s[7], s[8]}, grads);
    return {grad_rows, at::Tensor(), grads.w1, grads.w2, grads.w3, grads.b1, grads.b2, at::Tensor()};
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
