#include "scheduler/overlap.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <functional>
#include <optional>
#include <vector>

#include "common/status.h"
#include "scheduler/expert_ffn.h"
#include "scheduler/row_order.h"
#include "scheduler/tensor_util.h"

namespace dynamoe::scheduler {
namespace {

using monitor::Phase;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Unit index: 0 is the local unit, 1 + t is stage t.
using UnitFn = std::function<at::Tensor(int64_t unit, const at::Tensor& slot_major_rows)>;

// Adds the scope's wall time to a phase when times are kept.
struct MaybePhase {
  MaybePhase(monitor::PhaseTimes* times, Phase phase) {
    if (times != nullptr) timer.emplace(*times, phase);
  }
  std::optional<monitor::ScopedPhase> timer;
};

// Moves `in` (send order) to the experts unit by unit, runs fn on each
// unit's slot-major rows, and brings its results back into `out` (send
// order); an undefined `out` leaves the results where they were computed.
void RunPipeline(const PipelineLayout& layout, runtime::Communicator& comm, const at::Tensor& in, at::Tensor out,
                 const UnitFn& fn, const runtime::CollectiveTag& there_tag, const runtime::CollectiveTag& back_tag,
                 monitor::PhaseTimes* times) {
  // Stages that move rows somewhere; every rank skips the same idle ones.
  std::vector<const PipelineUnit*> stages;
  std::vector<int64_t> unit_of;
  for (size_t t = 0; t < layout.stages.size(); ++t)
    if (!layout.stages[t].idle) {
      stages.push_back(&layout.stages[t]);
      unit_of.push_back(1 + static_cast<int64_t>(t));
    }
  const int64_t T = static_cast<int64_t>(stages.size());
  std::vector<int64_t> shape = in.sizes().vec();
  std::vector<at::Tensor> arrived(T), results(T);
  std::vector<std::unique_ptr<runtime::CommHandle>> there(T), back(T);
  auto start = [&](int64_t t) {
    const PipelineUnit& u = *stages[t];
    shape[0] = u.recv_total;
    arrived[t] = at::empty(shape, in.options());
    there[t] = comm.AllToAllAsync(in.narrow(0, u.send_offset, u.send_total), arrived[t], u.send_splits,
                                  u.recv_splits, there_tag);
  };
  auto run = [&](int64_t unit, const PipelineUnit& u, const at::Tensor& rows) {
    MaybePhase timer(times, Phase::kExperts);
    return PermuteRows(fn(unit, PermuteRows(rows, u.to_slot_major)), u.to_source_major).contiguous();
  };
  {
    MaybePhase timer(times, Phase::kDispatch);
    for (int64_t t = 0; t < std::min<int64_t>(2, T); ++t) start(t);
  }
  const PipelineUnit& local = layout.local;
  if (local.recv_total > 0) {
    const at::Tensor result = run(0, local, in.narrow(0, 0, local.send_total));
    if (out.defined()) out.narrow(0, 0, local.send_total).copy_(result);
  }
  for (int64_t t = 0; t < T; ++t) {
    const PipelineUnit& u = *stages[t];
    {
      MaybePhase timer(times, Phase::kDispatch);
      if (!there[t]->OrderAfter()) {
        ThrowIfError(there[t]->Wait());
        there[t].reset();
      }
      if (t + 2 < T) start(t + 2);
    }
    results[t] = run(unit_of[t], u, arrived[t]);
    if (!out.defined()) continue;
    MaybePhase timer(times, Phase::kCombine);
    back[t] = comm.AllToAllAsync(results[t], out.narrow(0, u.send_offset, u.send_total), u.recv_splits,
                                 u.send_splits, back_tag);
  }
  MaybePhase timer(times, Phase::kCombine);
  for (int64_t t = 0; t < T; ++t) {
    if (there[t]) ThrowIfError(there[t]->Wait());  // GPU: deferred error checks
    if (back[t]) ThrowIfError(back[t]->Wait());
  }
}

// What the forward pass leaves for backward besides the saved tensors (the
// per-unit inputs and pre-activations go through save_for_backward, so
// retain_graph, saved-tensor hooks and checkpointing treat them as any other).
struct PipelineContext : torch::CustomClassHolder {
  std::shared_ptr<const PipelineLayout> layout;
  runtime::CommunicatorPtr comm;
  std::string layer;
  kernels::Activation activation = kernels::Activation::kGelu;
  monitor::PhaseTimes* times = nullptr;  // forward only
};

const int64_t* UnitCounts(const PipelineLayout& layout, int64_t unit) {
  const PipelineUnit& u = unit == 0 ? layout.local : layout.stages[unit - 1];
  return u.slot_counts.data_ptr<int64_t>();
}

runtime::CollectiveTag Tag(const std::string& layer, Phase phase, bool backward) {
  return {layer, monitor::PhaseName(phase), backward};
}

class OverlapFunction : public torch::autograd::Function<OverlapFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& send_rows, const at::Tensor& w1,
                            const at::Tensor& w2, const at::Tensor& w3, const at::Tensor& b1, const at::Tensor& b2,
                            c10::intrusive_ptr<PipelineContext> pc) {
    const ExpertParams params{w1, w2, w3, b1, b2, pc->activation};
    const PipelineLayout& layout = *pc->layout;
    const int64_t units = 1 + static_cast<int64_t>(layout.stages.size());
    // Saved: the five parameters, then per unit its slot-major input and
    // pre-activations h, g (undefined for units that computed nothing).
    std::vector<at::Tensor> saved(5 + 3 * units);
    at::Tensor out = at::empty_like(send_rows);
    RunPipeline(
        layout, *pc->comm, send_rows, out,
        [&](int64_t unit, const at::Tensor& rows) {
          FFNActivations act;
          at::Tensor y = FFNForward(rows, UnitCounts(layout, unit), params, &act);
          // Detached: the local unit's rows may be a view of send_rows made
          // here without grad mode, which autograd cannot re-materialise
          // through saved-tensor hooks (non-reentrant checkpointing).
          saved[5 + 3 * unit] = rows.detach();
          saved[6 + 3 * unit] = act.h;
          saved[7 + 3 * unit] = act.g;
          return y;
        },
        Tag(pc->layer, Phase::kDispatch, false), Tag(pc->layer, Phase::kCombine, false), pc->times);
    pc->times = nullptr;
    saved[0] = w1, saved[1] = w2, saved[2] = w3, saved[3] = b1, saved[4] = b2;
    ctx->save_for_backward(saved);
    ctx->saved_data["pipeline"] = c10::IValue::make_capsule(pc);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto pc = c10::static_intrusive_pointer_cast<PipelineContext>(ctx->saved_data["pipeline"].toCapsule());
    // Unpacked once per backward (a second one, under retain_graph, unpacks again).
    const auto w = ctx->get_saved_variables();
    const ExpertParams params{w[0], w[1], w[2], w[3], w[4], pc->activation};
    const PipelineLayout& layout = *pc->layout;
    const at::Tensor grad_out = grad[0].contiguous();
    // Without a gradient for the rows (x needs none), only the weight
    // gradients are made and nothing travels back.
    at::Tensor grad_in = ctx->needs_input_grad(0) ? at::empty_like(grad_out) : at::Tensor();
    FFNGrads grads = ZeroGrads(params, /*wide=*/true);
    RunPipeline(
        layout, *pc->comm, grad_out, grad_in,
        [&](int64_t unit, const at::Tensor& grad_rows) {
          return FFNBackward(grad_rows, w[5 + 3 * unit], UnitCounts(layout, unit), params,
                             {w[6 + 3 * unit], w[7 + 3 * unit]}, grads);
        },
        Tag(pc->layer, Phase::kDispatch, true), Tag(pc->layer, Phase::kCombine, true), nullptr);
    grads = Narrow(std::move(grads), params);
    return {grad_in, grads.w1, grads.w2, grads.w3, grads.b1, grads.b2, at::Tensor()};
  }
};

}  // namespace

at::Tensor OverlappedExperts(const at::Tensor& send_rows, const ExpertParams& params,
                             std::shared_ptr<const PipelineLayout> layout, const runtime::CommunicatorPtr& comm,
                             const std::string& layer, monitor::PhaseTimes* times) {
  auto pc = c10::make_intrusive<PipelineContext>();
  pc->layout = std::move(layout);
  pc->comm = comm;
  pc->layer = layer;
  pc->activation = params.activation;
  pc->times = times;
  auto c = [&](const at::Tensor& t) { return t.defined() ? t.contiguous() : at::empty({0}, send_rows.options()); };
  return OverlapFunction::apply(send_rows.contiguous(), c(params.w1), c(params.w2), c(params.w3), c(params.b1),
                                c(params.b2), pc);
}

}  // namespace dynamoe::scheduler
