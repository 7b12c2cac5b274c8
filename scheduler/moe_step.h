// One MoE step on one process: gate -> counts -> dispatch -> experts ->
// combine, with per-phase timings. The C++ module and the torch ops both call
// this, so C++ and Python have one implementation.
#pragma once

#include <ATen/core/Tensor.h>

#include <torch/custom_class.h>

#include <functional>
#include <memory>
#include <vector>

#include "monitor/phases.h"
#include "monitor/step_observer.h"
#include "runtime/communicator.h"
#include "config/settings.h"
#include "scheduler/functions.h"
#include "placement/plan.h"
#include "scheduler/layer_state.h"
#include "scheduler/options.h"
#include "scheduler/router.h"
#include "scheduler/schedule.h"

namespace dynamoe::scheduler {

// A user-provided expert: rows of one expert in, same-shaped rows out.
using CustomExpertFn = std::function<at::Tensor(int64_t expert_idx, const at::Tensor& rows)>;

struct StepInputs {
  at::Tensor x;            // [..., d_model]
  at::Tensor gate_weight;  // [E, d_model]
  at::Tensor gate_bias;    // [E] when options.router_bias(), else undefined
  at::Tensor expert_bias;  // [E] or undefined
  // This rank's experts, [E_local, ...] with E_local = E / ep_size; used when
  // custom_expert is empty. custom_expert gets global expert indices.
  ExpertParams experts;
  CustomExpertFn custom_expert;
  // The caller runs this rank's experts itself (BeginStep, e.g. Python
  // modules): no copies, the sequential schedule. Implied by custom_expert.
  bool custom_experts = false;
  // The expert-parallel group; null (or size 1) runs every expert locally.
  runtime::CommunicatorPtr comm;
  // The layer's state across steps (step counter, placement, what a
  // recomputation replays); null runs one stateless step: step 0, plain
  // expert parallelism, nothing recorded.
  c10::intrusive_ptr<LayerState> state;
  // The token schedule; unset takes the settings' (DYNAMOE_SCHEDULE and friends).
  std::optional<ScheduleOptions> schedule;
  // The step's settings; null: the process's (runtime::GlobalSettings(), from
  // the environment). They give the schedule's defaults, the plan check and
  // the layer signature's ranks per node; the placement state (policy, cost
  // model) and the GEMM algorithm still read the process's.
  const runtime::Settings* settings = nullptr;
  bool training = false;
  // Told of the step (not of a recomputation); null: the process's
  // (runtime::ProcessStepObservers: the trace, the metrics, the program's own).
  monitor::StepObservers* observers = nullptr;
};

// The step's tensors; everything else it reports is in `stats`.
struct StepResult {
  at::Tensor y;              // same shape as x
  at::Tensor aux_loss;       // weighted sum of the auxiliary losses, in the graph
  at::Tensor balance_loss;   // unweighted, in the graph
  at::Tensor z_loss;         // unweighted, in the graph
  at::Tensor counts;         // [ep_size, E] int64: rows each rank sent to each expert
  at::Tensor routed_counts;  // [E] int64: this rank's assignments before capacity
  at::Tensor global_routed_counts;  // [E] int64: summed over the EP group
  at::Tensor routed_matrix;         // [ep_size, E] int64: each rank's assignments before capacity
  monitor::StepStats stats;
};

// Experts per rank: num_experts / ep_size (ep_size = comm's size, or 1).
int64_t LocalExperts(const MoEOptions& options, const runtime::CommunicatorPtr& comm);

// Checks shapes, dtypes and devices of the inputs against the options;
// InvalidArgument names the layer, what was expected and what came.
absl::Status ValidateInputs(const MoEOptions& options, const StepInputs& in);

// One forward step. In training (and not a recomputation) it also advances
// the state's step and applies the expert-bias update (bias_update_rate),
// in place on in.expert_bias. Unless it is a recomputation, the observers
// are told of it. The MoEOptions overload validates them first (InvalidArgument,
// thrown); the ValidatedOptions one checks only the inputs.
StepResult MoEForward(const ValidatedOptions& options, const StepInputs& in);
StepResult MoEForward(const MoEOptions& options, const StepInputs& in);

// A step stopped between dispatch and combine, for custom experts that the
// caller runs itself (Python modules): it holds the rows this rank's experts
// compute, slot-major, and finishes as MoEForward would. One use: Finish
// consumes it.
class PendingStep : public torch::CustomClassHolder {
 public:
  struct Run;
  explicit PendingStep(std::unique_ptr<Run> run);
  ~PendingStep() override;

  const at::Tensor& input() const;        // the step's x, as given
  const at::Tensor& rows() const;         // [rows, d_model], slot-major
  std::vector<int64_t> slot_counts() const;  // rows per slot (this rank's experts, in order)
  int64_t first_expert() const;           // global index of slot 0 (custom experts have no copies)
  // outputs: one [n, d_model] tensor per slot with n > 0 rows, in slot order.
  // InvalidArgument (thrown) names the expert whose output has the wrong
  // shape; the step then stays pending. in.settings and in.observers must
  // outlive it.
  StepResult Finish(const std::vector<at::Tensor>& outputs);

 private:
  std::unique_ptr<Run> run_;
};

// Route, plan and dispatch, up to the experts (in.custom_experts or
// in.custom_expert must be set). Options as for MoEForward.
c10::intrusive_ptr<PendingStep> BeginStep(const ValidatedOptions& options, const StepInputs& in);
c10::intrusive_ptr<PendingStep> BeginStep(const MoEOptions& options, const StepInputs& in);

// The router's view of the layer options for one step.
RouterOptions MakeRouterOptions(const MoEOptions& options, bool training, int64_t step);

}  // namespace dynamoe::scheduler
