// One MoE step on one process: gate -> counts -> dispatch -> experts ->
// combine, with per-phase timings. The C++ module and the torch ops both call
// this, so C++ and Python have one implementation.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>

#include "monitor/phases.h"
#include "runtime/communicator.h"
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
  // The expert-parallel group; null (or size 1) runs every expert locally.
  runtime::CommunicatorPtr comm;
  // The layer's state across steps (step counter, placement, what a
  // recomputation replays); null runs one stateless step: step 0, plain
  // expert parallelism, nothing recorded.
  c10::intrusive_ptr<LayerState> state;
  // The token schedule; unset reads DYNAMOE_SCHEDULE and friends.
  std::optional<ScheduleOptions> schedule;
  bool training = false;
};

struct StepResult {
  at::Tensor y;              // same shape as x
  at::Tensor aux_loss;       // weighted sum of the auxiliary losses, in the graph
  at::Tensor balance_loss;   // unweighted, in the graph
  at::Tensor z_loss;         // unweighted, in the graph
  at::Tensor counts;         // [ep_size, E] int64: rows each rank sent to each expert
  at::Tensor routed_counts;  // [E] int64: this rank's assignments before capacity
  at::Tensor global_routed_counts;  // [E] int64: summed over the EP group
  at::Tensor routed_matrix;         // [ep_size, E] int64: each rank's assignments before capacity
  int64_t bytes_sent = 0;           // token rows sent to other ranks (forward)
  int64_t bytes_received = 0;
  double comm_seconds = 0;          // time spent waiting on collectives (forward)
  int64_t weight_bytes_sent = 0;    // copied experts' weights sent (forward)
  int64_t weight_bytes_received = 0;
  placement::Plan plan;             // the placement in force this step
  // The schedule that ran: overlapped, and the pipeline stages that moved
  // rows (at most peer groups x token chunks; stages where no rank has rows
  // are skipped by all); false / 0 for sequential or one process.
  bool overlapped = false;
  int64_t pipeline_stages = 0;
  // This forward recomputed an earlier one (activation checkpointing): it
  // routed as that one did and had no side effects of its own.
  bool recomputed = false;
  int64_t step = 0;  // the training step it ran as
  int64_t dropped = 0;
  int64_t capacity = -1;
  monitor::PhaseTimes times;
};

// Experts per rank: num_experts / ep_size (ep_size = comm's size, or 1).
int64_t LocalExperts(const MoEOptions& options, const runtime::CommunicatorPtr& comm);

// Checks shapes, dtypes and devices of the inputs against the options;
// InvalidArgument names the layer, what was expected and what came.
absl::Status ValidateInputs(const MoEOptions& options, const StepInputs& in);

// One forward step. In training (and not a recomputation) it also advances
// the state's step and applies the expert-bias update (bias_update_rate),
// in place on in.expert_bias.
StepResult MoEForward(const MoEOptions& options, const StepInputs& in);

// The router's view of the layer options for one step.
RouterOptions MakeRouterOptions(const MoEOptions& options, bool training, int64_t step);

}  // namespace dynamoe::scheduler
