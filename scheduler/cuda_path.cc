#include "scheduler/cuda_path.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/csrc/autograd/custom_function.h>

#include "common/status.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/kernels_cuda.h"
#include "scheduler/device_ops.h"
#include "scheduler/expert_ffn.h"
#include "scheduler/tensor_util.h"

namespace dynamoe::scheduler::cuda_path {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace kc = kernels::cuda;

cudaStream_t Stream() { return at::cuda::getCurrentCUDAStream().stream(); }

kc::DType GemmType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kc::DType::kFloat;
    case at::kDouble: return kc::DType::kDouble;
    case at::kBFloat16: return kc::DType::kBFloat16;
    case at::kHalf: return kc::DType::kHalf;
    default:
      throw Error(absl::InvalidArgumentError(
          absl::StrCat("grouped GEMM: expected float32, float64, bfloat16 or float16, got ", c10::toString(t))));
  }
}

// DYNAMOE_GROUPED_GEMM: loop (one cuBLAS call per expert, the default) or
// grouped (one cublasGemmGroupedBatchedEx call); expert_ffn.h's GemmAlgorithmInUse.
kc::GemmAlgo Algo() {
  return GemmAlgorithmInUse() == runtime::GemmAlgorithm::kGrouped ? kc::GemmAlgo::kGrouped : kc::GemmAlgo::kLoop;
}

void RunGemm(kc::GemmOp op, const at::Tensor& a, const at::Tensor& b, at::Tensor& out, const int64_t* counts,
             int64_t groups, int64_t k, int64_t n, float beta) {
  kc::GroupedGemm g;
  g.op = op, g.ab = GemmType(a.scalar_type()), g.c = GemmType(out.scalar_type());
  g.groups = static_cast<int>(groups), g.rows = counts, g.k = k, g.n = n;
  g.a = a.data_ptr(), g.b = b.data_ptr(), g.out = out.data_ptr(), g.beta = beta;
  const kc::GemmAlgo algo = Algo();
  const size_t ws_bytes = kc::GroupedGemmWorkspaceBytes(g.groups, algo);
  at::Tensor ws;
  if (ws_bytes > 0) ws = at::empty({static_cast<int64_t>(ws_bytes)}, a.options().dtype(at::kByte));
  ThrowIfError(kc::RunGroupedGemm(at::cuda::getCurrentCUDABlasHandle(), g, algo, ws_bytes ? ws.data_ptr() : nullptr,
                                  ws_bytes, Stream()));
}

// weight and scores as differentiable outputs of the fused kernel. Backward:
// dL/ds = grad_scores + scatter of the top-k weight gradient (through the
// renormalisation), then through softmax.
class FusedRouterFunction : public torch::autograd::Function<FusedRouterFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& bias, int64_t top_k,
                               int64_t capacity, bool normalize) {
    const int64_t T = logits.size(0), E = logits.size(1);
    const auto f32 = logits.options();
    const auto i64 = logits.options().dtype(at::kLong);
    at::Tensor scores = at::empty({T, E}, f32), weight = at::empty({T, top_k}, f32);
    at::Tensor idx = at::empty({T, top_k}, i64), position = at::empty({T, top_k}, i64);
    // kept [E], routed [E], dropped, non-finite rows in one buffer: one copy to the host.
    at::Tensor counts = at::empty({2 * E + 2}, i64), score_sum = at::empty({E}, f32);
    kernels::RouterSpec spec{T, E, static_cast<int>(top_k), kernels::ScoreFunction::kSoftmax, normalize, capacity};
    const size_t ws_bytes = kc::RouterWorkspaceBytes(spec);
    at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, logits.options().dtype(at::kByte));
    kernels::RouterOutputs out{Ptr<float>(scores),   Ptr<int64_t>(idx),        Ptr<float>(weight),
                               Ptr<int64_t>(position), Ptr<int64_t>(counts),   Ptr<int64_t>(counts) + E,
                               Ptr<float>(score_sum),  Ptr<int64_t>(counts) + 2 * E,
                               Ptr<int64_t>(counts) + 2 * E + 1};
    ThrowIfError(kc::FusedRouter(Ptr<float>(logits), bias.defined() ? Ptr<float>(bias) : nullptr, spec, out,
                                 ws.data_ptr(), ws_bytes, Stream()));
    ctx->save_for_backward({scores, weight, idx});
    ctx->saved_data["normalize"] = normalize;
    ctx->mark_non_differentiable({idx, position, counts});
    return {weight, scores, idx, position, counts};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor &scores = s[0], &weight = s[1], &idx = s[2];
    at::Tensor gw = grad[0].defined() ? grad[0] : at::zeros_like(weight);
    at::Tensor gs = grad[1].defined() ? grad[1].clone() : at::zeros_like(scores);
    if (ctx->saved_data["normalize"].toBool()) {
      // w_j = s_j / S: dL/ds_j = (gw_j - sum_i gw_i w_i) / S.
      const at::Tensor chosen = scores.gather(1, idx);
      const at::Tensor sum = chosen.sum(1, true);
      gw = (gw - (gw * weight).sum(1, true)) / sum;
    }
    gs.scatter_add_(1, idx, gw);  // distinct experts per token: one term per element
    const at::Tensor grad_logits = scores * (gs - (gs * scores).sum(1, true));
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

absl::StatusOr<Routing> Route(const at::Tensor& x, const at::Tensor& gate_weight, const at::Tensor& gate_bias,
                              const at::Tensor& expert_bias, const RouterOptions& options) {
  const int64_t num_tokens = x.size(0), num_experts = gate_weight.size(0);
  const int top_k = static_cast<int>(options.top_k);
  DYNAMOE_CHECK_ARG(x.scalar_type() != at::kDouble, options.name,
                    ": float64 data on CUDA is not supported by the fused router; use float32, bfloat16 or float16");
  const bool noisy = options.training && options.noisy_gate_policy != "none";
  DYNAMOE_CHECK_ARG(!(noisy && options.noisy_gate_policy == "RSample"), options.name,
                    ": noisy_gate_policy=RSample is not supported on CUDA yet; use Jitter or none");
  at::Tensor xr = x.to(at::kFloat);
  if (noisy)  // Jitter: multiplicative noise on the router input
    xr = xr * at::empty_like(xr).uniform_(1.0 - options.jitter_eps, 1.0 + options.jitter_eps);
  Routing r;
  r.logits = at::linear(xr, gate_weight.to(at::kFloat), gate_bias.defined() ? gate_bias.to(at::kFloat) : at::Tensor())
                 .contiguous();
  DYNAMOE_ASSIGN_OR_RETURN(const int64_t capacity, kernels::ExpertCapacity(num_tokens, top_k, num_experts,
                                                                           options.capacity_factor,
                                                                           options.min_capacity));
  const at::Tensor bias = expert_bias.defined() ? expert_bias.detach().to(at::kFloat).contiguous() : at::Tensor();
  variable_list outs = FusedRouterFunction::apply(r.logits, bias, top_k, capacity, options.normalize);
  r.weight = outs[0], r.scores = outs[1], r.expert_idx = outs[2], r.position = outs[3];
  const at::Tensor counts = outs[4].cpu();  // the forward's one synchronisation
  const int64_t bad = Ptr<int64_t>(counts)[2 * num_experts + 1];
  DYNAMOE_CHECK_ARG(!options.check_finite || bad == 0, options.name, ": ", bad, " of ", num_tokens,
                    " rows of router logits are not finite (NaN or Inf); check the input or ",
                    "the gate weights, or pass check_finite=false");
  if (options.use_rts) {
    // Random drop order: the CPU twin decides (the GPU kernel keeps choice-then-token order).
    const at::Tensor idx_host = r.expert_idx.cpu();
    at::Tensor pos = at::empty_like(idx_host), kept = at::empty({num_experts}, idx_host.options()),
               routed = at::empty_like(kept);
    kernels::RoutingOptions ro;
    ro.capacity = capacity, ro.use_rts = true, ro.rts_seed = options.rts_seed, ro.step = options.step;
    DYNAMOE_RETURN_IF_ERROR(kernels::ComputeRouting(Ptr<int64_t>(idx_host), num_tokens, top_k, num_experts, ro,
                                                    Ptr<int64_t>(pos), Ptr<int64_t>(kept), Ptr<int64_t>(routed),
                                                    &r.dropped));
    r.position = pos.to(x.device());
    r.kept_counts = kept, r.routed_counts = routed;
  } else {
    r.kept_counts = counts.narrow(0, 0, num_experts).clone();
    r.routed_counts = counts.narrow(0, num_experts, num_experts).clone();
    r.dropped = Ptr<int64_t>(counts)[2 * num_experts];
  }
  r.capacity = capacity;
  r.num_rows = num_tokens * top_k - r.dropped;
  FinishRouting(r, options.use_rts ? r.routed_counts.to(x.device()) : outs[4].narrow(0, num_experts, num_experts),
                options);
  return r;
}

at::Tensor Assignments(const at::Tensor& position, int64_t num_rows) {
  at::Tensor assignment = at::empty({num_rows}, position.options());
  if (num_rows == 0) return assignment;
  // Kept positions are a permutation of [0, num_rows): every row written once.
  ThrowIfError(kc::InvertPositions(Ptr<int64_t>(position), position.numel(), Ptr<int64_t>(assignment), Stream()));
  return assignment;
}

at::Tensor GatherRows(const at::Tensor& x, const at::Tensor& assignment, int64_t top_k) {
  const int64_t n = assignment.numel(), d = x.size(1);
  const at::Tensor token = at::div(assignment, top_k, "floor");
  at::Tensor rows = at::empty({n, d}, x.options());
  DispatchDataType(x.scalar_type(), "dispatch", [&](auto t_tag, auto) {
    using T = decltype(t_tag);
    ThrowIfError(kc::GatherRows<T>(Ptr<T>(x), Ptr<int64_t>(token), n, d, Ptr<T>(rows), Stream()));
  });
  return rows;
}

at::Tensor CombineRows(const at::Tensor& rows, const at::Tensor& weight, const at::Tensor& position) {
  const int64_t T = position.size(0), d = rows.size(1);
  const int k = static_cast<int>(position.size(1));
  at::Tensor out = at::empty({T, d}, rows.options());
  DispatchDataType(rows.scalar_type(), "combine", [&](auto t_tag, auto w_tag) {
    using T_ = decltype(t_tag);
    using W = decltype(w_tag);
    const at::Tensor w = weight.defined() ? weight.to(c10::CppTypeToScalarType<W>::value).contiguous() : weight;
    ThrowIfError(kc::CombineRows<T_, W>(Ptr<T_>(rows), Ptr<int64_t>(position), w.defined() ? Ptr<W>(w) : nullptr, k,
                                        T, d, Ptr<T_>(out), Stream()));
  });
  return out;
}

at::Tensor ScatterWeightedRows(const at::Tensor& grad_out, const at::Tensor& assignment, const at::Tensor& weight,
                               int64_t top_k) {
  const int64_t n = assignment.numel(), d = grad_out.size(1);
  at::Tensor grad_rows = at::empty({n, d}, grad_out.options());
  DispatchDataType(grad_out.scalar_type(), "combine backward", [&](auto t_tag, auto w_tag) {
    using T = decltype(t_tag);
    using W = decltype(w_tag);
    const at::Tensor w = weight.to(c10::CppTypeToScalarType<W>::value).contiguous();
    ThrowIfError(kc::ScatterWeightedRows<T, W>(Ptr<T>(grad_out), Ptr<int64_t>(assignment), Ptr<W>(w),
                                               static_cast<int>(top_k), n, d, Ptr<T>(grad_rows), Stream()));
  });
  return grad_rows;
}

at::Tensor CombineWeightGrad(const at::Tensor& grad_out, const at::Tensor& rows, const at::Tensor& position,
                             at::ScalarType weight_dtype) {
  const int64_t T = position.size(0), d = rows.size(1);
  const int k = static_cast<int>(position.size(1));
  at::Tensor grad_w;
  DispatchDataType(rows.scalar_type(), "combine backward", [&](auto t_tag, auto w_tag) {
    using T_ = decltype(t_tag);
    using W = decltype(w_tag);
    grad_w = at::empty({T, k}, position.options().dtype(c10::CppTypeToScalarType<W>::value));
    ThrowIfError(kc::CombineWeightGrad<T_, W>(Ptr<T_>(grad_out), Ptr<T_>(rows), Ptr<int64_t>(position), k, T, d,
                                              Ptr<W>(grad_w), Stream()));
  });
  return grad_w.to(weight_dtype);
}

at::Tensor GroupedForward(const at::Tensor& a, const at::Tensor& b, const int64_t* counts) {
  const int64_t k = b.size(1), n = b.size(2);
  at::Tensor out = at::empty({a.size(0), n}, a.options());
  RunGemm(kc::GemmOp::kNN, a.contiguous(), b.contiguous(), out, counts, b.size(0), k, n, 0.0f);
  return out;
}

at::Tensor GroupedDataGrad(const at::Tensor& a, const at::Tensor& b, const int64_t* counts) {
  const int64_t k = b.size(1), n = b.size(2);
  at::Tensor out = at::empty({a.size(0), k}, a.options());
  RunGemm(kc::GemmOp::kNT, a.contiguous(), b.contiguous(), out, counts, b.size(0), k, n, 0.0f);
  return out;
}

void GroupedWeightGrad(const at::Tensor& a, const at::Tensor& b, const int64_t* counts, at::Tensor& out,
                       bool overwrite) {
  DYNAMOE_THROW_IF(!out.is_contiguous(), "grouped GEMM: the weight-gradient accumulator must be contiguous");
  RunGemm(kc::GemmOp::kTN, a.contiguous(), b.contiguous(), out, counts, out.size(0), out.size(1), out.size(2),
          overwrite ? 0.0f : 1.0f);
}

at::Tensor ActivationForward(const at::Tensor& h, const at::Tensor& g, kernels::Activation activation) {
  at::Tensor a = at::empty_like(h);
  const bool gated = g.defined() && g.numel() > 0;
  DispatchDataType(h.scalar_type(), "activation", [&](auto t_tag, auto) {
    using T = decltype(t_tag);
    ThrowIfError(kc::ActivationForward<T>(Ptr<T>(h), gated ? Ptr<T>(g) : nullptr, activation,
                                          h.numel(), Ptr<T>(a), Stream()));
  });
  return a;
}

ActivationGrads ActivationBackward(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& g,
                                   kernels::Activation activation) {
  const bool gated = g.defined() && g.numel() > 0;
  ActivationGrads r;
  r.grad_h = grad_a.contiguous();
  r.a = at::empty_like(h);
  if (gated) r.grad_g = at::empty_like(h);
  DispatchDataType(h.scalar_type(), "activation backward", [&](auto t_tag, auto) {
    using T = decltype(t_tag);
    ThrowIfError(kc::ActivationBackward<T>(Ptr<T>(r.grad_h), Ptr<T>(h), gated ? Ptr<T>(g) : nullptr,
                                           activation, h.numel(), Ptr<T>(r.grad_h),
                                           gated ? Ptr<T>(r.grad_g) : nullptr, Ptr<T>(r.a), Stream()));
  });
  return r;
}

}  // namespace dynamoe::scheduler::cuda_path

namespace dynamoe::scheduler {
namespace {

// DeviceOps on CUDA: the functions above, on torch's current stream.
class Cuda final : public DeviceOps {
 public:
  absl::StatusOr<Routing> Route(const at::Tensor& x, const at::Tensor& gate_weight, const at::Tensor& gate_bias,
                                const at::Tensor& expert_bias, const RouterOptions& options) const override {
    return cuda_path::Route(x, gate_weight, gate_bias, expert_bias, options);
  }
  at::Tensor Assignments(const at::Tensor& position, int64_t num_rows) const override {
    return cuda_path::Assignments(position, num_rows);
  }
  at::Tensor GatherRows(const at::Tensor& x, const at::Tensor& assignment, int64_t top_k) const override {
    return cuda_path::GatherRows(x, assignment, top_k);
  }
  at::Tensor CombineRows(const at::Tensor& rows, const at::Tensor& weight, const at::Tensor& position) const override {
    return cuda_path::CombineRows(rows, weight, position);
  }
  CombineGrads CombineBackward(const at::Tensor& g, const at::Tensor& rows, const at::Tensor& weight,
                               const at::Tensor& position, const at::Tensor& assignment) const override {
    return {cuda_path::ScatterWeightedRows(g, assignment, weight, position.size(1)),
            cuda_path::CombineWeightGrad(g, rows, position, weight.scalar_type())};
  }
  at::Tensor SlotProduct(const at::Tensor& a, const at::Tensor& w, const int64_t* counts) const override {
    return cuda_path::GroupedForward(a, w, counts);
  }
  void SlotProductT(const at::Tensor& a, const at::Tensor& w, const int64_t* counts, at::Tensor& out,
                    bool accumulate) const override {
    at::Tensor r = cuda_path::GroupedDataGrad(a, w, counts);
    if (accumulate) out.add_(r);
    else out = r;
  }
  void AddSlotOuter(const at::Tensor& a, const at::Tensor& b, const int64_t* counts, at::Tensor& acc, bool fresh,
                    const at::Tensor& param) const override {
    // Fresh: acc is allocated here and written (acc[k] = ...), so it holds
    // memory only from this point of the backward on.
    if (!acc.defined()) acc = at::empty_like(param);
    cuda_path::GroupedWeightGrad(a, b, counts, acc, fresh);
  }
  bool MakesFreshSums() const override { return true; }
  at::Tensor ActivationForward(const at::Tensor& h, const at::Tensor& g, kernels::Activation activation) const override {
    return cuda_path::ActivationForward(h, g, activation);
  }
  ActivationGrads ActivationBackward(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& g,
                                     kernels::Activation activation) const override {
    cuda_path::ActivationGrads r = cuda_path::ActivationBackward(grad_a, h, g, activation);
    return {std::move(r.grad_h), std::move(r.grad_g), std::move(r.a)};
  }
};

}  // namespace

const DeviceOps* CudaOps() {
  static const Cuda ops;
  return &ops;
}

}  // namespace dynamoe::scheduler
