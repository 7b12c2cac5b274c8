#include "scheduler/functions.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "scheduler/device_ops.h"
#include "scheduler/expert_ffn.h"
#include "scheduler/tensor_util.h"

namespace dynamoe::scheduler {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class DispatchFunction : public torch::autograd::Function<DispatchFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& position,
                            int64_t num_rows) {
    const DeviceOps& ops = OpsFor(x);
    ctx->save_for_backward({position});
    return ops.GatherRows(x, ops.Assignments(position, num_rows), position.size(1));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const at::Tensor position = ctx->get_saved_variables()[0];
    const at::Tensor g = grad[0].contiguous();
    return {OpsFor(g).CombineRows(g, at::Tensor(), position), at::Tensor(), at::Tensor()};
  }
};

class CombineFunction : public torch::autograd::Function<CombineFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& rows, const at::Tensor& weight,
                            const at::Tensor& position) {
    ctx->save_for_backward({rows, weight, position});
    return OpsFor(rows).CombineRows(rows, weight, position);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &rows = saved[0], &weight = saved[1], &position = saved[2];
    const at::Tensor g = grad[0].contiguous();
    const DeviceOps& ops = OpsFor(rows);
    const DeviceOps::CombineGrads d = ops.CombineBackward(g, rows, weight, position,
                                                          ops.Assignments(position, rows.size(0)));
    return {d.rows, d.weight, at::Tensor()};
  }
};

class ExpertFFNFunction : public torch::autograd::Function<ExpertFFNFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& rows, const at::Tensor& kept_counts,
                            const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& w3,
                            const at::Tensor& b1, const at::Tensor& b2, kernels::Activation activation) {
    FFNActivations saved;
    const at::Tensor y = FFNForward(rows, Ptr<int64_t>(kept_counts), {w1, w2, w3, b1, b2, activation}, &saved);
    ctx->save_for_backward({rows, kept_counts, w1, w2, w3, b1, b2, saved.h, saved.g});
    ctx->saved_data["activation"] = static_cast<int64_t>(activation);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto s = ctx->get_saved_variables();
    const ExpertParams params{s[2], s[3], s[4], s[5], s[6], static_cast<kernels::Activation>(ctx->saved_data["activation"].toInt())};
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
