#include "scheduler/moe_step.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <mutex>

#include "absl/strings/str_join.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/status.h"
#include "config/config.h"
#include "config/placement_config.h"
#include "config/settings.h"
#include "runtime/expert_copies.h"
#include "config/step_observers.h"
#include "scheduler/device_ops.h"
#include "scheduler/expert_parallel.h"
#include "scheduler/layer_signature.h"
#include "scheduler/overlap.h"
#include "scheduler/token_exchange.h"

namespace dynamoe::scheduler {
namespace {

std::string Shape(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

absl::Status CheckParam(const MoEOptions& o, const at::Tensor& x, const at::Tensor& t, const char* name,
                        std::vector<int64_t> shape) {
  DYNAMOE_CHECK_ARG(t.defined(), o.name(), ": parameter ", name, " is missing");
  DYNAMOE_CHECK_ARG(t.sizes().vec() == shape, o.name(), ": ", name, " must have shape [",
                    absl::StrJoin(shape, ", "), "], got ", Shape(t));
  DYNAMOE_CHECK_ARG(t.device() == x.device(), o.name(), ": ", name, " is on ", t.device().str(),
                    " but x is on ", x.device().str());
  DYNAMOE_CHECK_ARG(t.scalar_type() == x.scalar_type(), o.name(), ": x has dtype ",
                    c10::toString(x.scalar_type()), " but ", name, " has dtype ", c10::toString(t.scalar_type()),
                    "; convert the layer with .to(", c10::toString(x.scalar_type()), ")");
  return absl::OkStatus();
}

bool Custom(const StepInputs& in) { return in.custom_experts || static_cast<bool>(in.custom_expert); }

std::vector<int64_t> ToVectorOf(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

int64_t LocalExperts(const MoEOptions& options, const runtime::CommunicatorPtr& comm) {
  return comm ? options.num_experts() / comm->size() : options.num_experts();
}

absl::Status ValidateInputs(const MoEOptions& o, const StepInputs& in) {
  const at::Tensor& x = in.x;
  if (in.comm)
    DYNAMOE_CHECK_ARG(o.num_experts() % in.comm->size() == 0, o.name(), ": num_experts=", o.num_experts(),
                      " must be divisible by the expert-parallel group size ", in.comm->size());
  DYNAMOE_CHECK_ARG(x.defined(), o.name(), ": x is undefined");
  DYNAMOE_CHECK_ARG(x.dim() >= 1 && x.size(-1) == o.d_model(), o.name(), ": x must have shape [..., d_model=",
                    o.d_model(), "], got ", Shape(x));
  DYNAMOE_CHECK_ARG(FindDeviceOps(x.device()) != nullptr, o.name(), ": x is on ", x.device().str(),
                    CudaOps() != nullptr ? "; expected the CPU or a CUDA device"
                                         : "; this build runs on CPU only (build against a torch with CUDA for the "
                                           "GPU path)");
  DYNAMOE_CHECK_ARG(!in.gate_weight.defined() || in.gate_weight.device() == x.device(), o.name(),
                    ": gate.weight is on ", in.gate_weight.device().str(), " but x is on ", x.device().str());
  const auto dt = x.scalar_type();
  const bool half_ok = x.is_cuda();  // fp16 GEMMs exist on CUDA (not in torch 1.13's CPU kernels)
  DYNAMOE_CHECK_ARG(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || (half_ok && dt == at::kHalf),
                    o.name(), ": x must be float32, float64 or bfloat16", half_ok ? " or float16" : "", ", got ",
                    c10::toString(dt));
  const int64_t E = o.num_experts(), d = o.d_model(), h = o.d_hidden();
  DYNAMOE_CHECK_ARG(in.gate_weight.defined() && in.gate_weight.sizes().vec() == std::vector<int64_t>({E, d}),
                    o.name(), ": gate.weight must have shape [", E, ", ", d, "], got ", Shape(in.gate_weight));
  DYNAMOE_CHECK_ARG(in.gate_bias.defined() == o.router_bias(), o.name(), ": gate.bias is ",
                    in.gate_bias.defined() ? "given" : "missing", " but router_bias=", o.router_bias() ? "true" : "false");
  if (in.gate_bias.defined())
    DYNAMOE_CHECK_ARG(in.gate_bias.sizes().vec() == std::vector<int64_t>({E}) && in.gate_bias.device() == x.device(),
                      o.name(), ": gate.bias must have shape [", E, "] on ", x.device().str(), ", got ",
                      Shape(in.gate_bias), " on ", in.gate_bias.device().str());
  if (in.expert_bias.defined())
    DYNAMOE_CHECK_ARG(in.expert_bias.dim() == 1 && in.expert_bias.size(0) == E, o.name(),
                      ": expert_bias must have shape [", E, "], got ", Shape(in.expert_bias));
  if (Custom(in)) return absl::OkStatus();
  const ExpertParams& p = in.experts;
  const int64_t El = LocalExperts(o, in.comm);
  DYNAMOE_RETURN_IF_ERROR(CheckParam(o, x, p.w1, "w1", {El, d, h}));
  DYNAMOE_RETURN_IF_ERROR(CheckParam(o, x, p.w2, "w2", {El, h, d}));
  if (o.gated()) DYNAMOE_RETURN_IF_ERROR(CheckParam(o, x, p.w3, "w3", {El, d, h}));
  if (o.bias()) {
    DYNAMOE_RETURN_IF_ERROR(CheckParam(o, x, p.b1, "b1", {El, h}));
    DYNAMOE_RETURN_IF_ERROR(CheckParam(o, x, p.b2, "b2", {El, d}));
  }
  DYNAMOE_CHECK_ARG(kernels::kActivationNames.Name(p.activation) == o.activation(), o.name(), ": activation \"",
                    kernels::kActivationNames.Name(p.activation), "\" differs from the options' \"", o.activation(),
                    "\"");
  return absl::OkStatus();
}

RouterOptions MakeRouterOptions(const MoEOptions& options, bool training, int64_t step) {
  RouterOptions ro;
  ro.top_k = options.top_k();
  ro.capacity_factor = options.capacity_factor_for(training);
  ro.min_capacity = options.min_capacity();
  ro.normalize = options.normalize();
  ro.normalize_kept = options.normalize_kept();
  ro.balance_first_choice = options.balance_loss_choices() == "first";
  ro.use_rts = options.use_rts();
  ro.rts_seed = static_cast<uint64_t>(options.rts_seed());
  ro.step = step;
  ro.noisy_gate_policy = options.noisy_gate_policy();
  ro.jitter_eps = options.jitter_eps();
  ro.check_finite = options.check_finite();
  ro.training = training;
  ro.name = options.name();
  return ro;
}

namespace {

// Custom experts' outputs, one per slot with rows, -> one slot-major tensor.
at::Tensor JoinOutputs(const MoEOptions& options, const at::Tensor& rows, const at::Tensor& slot_counts,
                       int64_t first_expert, const std::vector<at::Tensor>& outputs) {
  const int64_t* counts = slot_counts.data_ptr<int64_t>();
  const int64_t busy = (slot_counts > 0).sum().item<int64_t>();
  DYNAMOE_THROW_IF(static_cast<int64_t>(outputs.size()) != busy, options.name(), ": expected ", busy,
                   " expert outputs (one per local expert with rows, in order), got ", outputs.size());
  std::vector<at::Tensor> outs;
  for (int64_t e = 0, next = 0; e < slot_counts.numel(); ++e) {
    if (counts[e] == 0) continue;
    const at::Tensor& out = outputs[next++];
    DYNAMOE_THROW_IF(!out.defined() || out.sizes() != at::IntArrayRef({counts[e], options.d_model()}),
                     options.name(), ": custom expert ", first_expert + e, " must return shape [", counts[e], ", ",
                     options.d_model(), "], got ", Shape(out));
    outs.push_back(out.to(rows.scalar_type()));
  }
  return outs.empty() ? rows * 0 : at::cat(outs, 0);
}

// The plan for this step: the layer's policy, or plain expert parallelism.
placement::Plan ChoosePlan(const MoEOptions& options, const StepInputs& in, const at::Tensor& counts,
                           int64_t bytes_per_element) {
  if (!in.state) return placement::Plan::None(counts.size(0), counts.size(1));
  PlacementState& placement = in.state->placement();
  if (Custom(in)) {
    static std::once_flag warned;
    if (placement.policy_name() != "none")
      std::call_once(warned, [&] {
        DYNAMOE_LOG(kWarning) << options.name() << ": DYNAMOE_PLACEMENT=" << placement.policy_name()
                              << " needs the built-in FFN experts; custom experts run without copies";
      });
    return placement.UseNone(options, counts, bytes_per_element);
  }
  return placement.Next(options, counts, bytes_per_element);
}

// The layer's own experts followed by the copies this rank holds.
ExpertParams WithCopies(const ExpertParams& own, const placement::Plan& plan, const runtime::CommunicatorPtr& comm,
                        const std::string& layer) {
  std::vector<at::Tensor*> fields;
  ExpertParams all = own;
  for (at::Tensor* t : {&all.w1, &all.w2, &all.w3, &all.b1, &all.b2})
    if (t->defined()) fields.push_back(t);
  std::vector<at::Tensor> params;
  for (at::Tensor* t : fields) params.push_back(*t);
  const std::vector<at::Tensor> copies = runtime::FetchCopies(params, plan, comm, layer);
  for (size_t i = 0; i < fields.size(); ++i) *fields[i] = at::cat({params[i], copies[i]}, 0);
  return all;
}

// The overlapped pipeline (overlap.h) around the experts.
at::Tensor OverlappedStep(const MoEOptions& options, const StepInputs& in, const ScheduleOptions& schedule,
                          const at::Tensor& x, const Routing& routing, const ExpertParams& experts,
                          StepResult& result) {
  using monitor::Phase;
  std::shared_ptr<const PipelineLayout> layout;
  at::Tensor rows;
  {
    monitor::ScopedPhase timer(result.stats.times, Phase::kDispatch);
    const int64_t degree = ResolveOverlapDegree(schedule, options, result.counts, result.stats.plan, x.element_size());
    layout = std::make_shared<const PipelineLayout>(
        MakePipelineLayout(result.counts, in.comm->rank(), result.stats.plan, schedule.group_size, degree));
    rows = Dispatch(x, routing.position, routing.num_rows);
    rows = PermuteRows(rows, layout->to_send_order);
  }
  result.stats.overlapped = true;
  for (const PipelineUnit& u : layout->stages) result.stats.pipeline_stages += u.idle ? 0 : 1;
  at::Tensor out = OverlappedExperts(rows, experts, layout, in.comm, options.name(), &result.stats.times);
  monitor::ScopedPhase timer(result.stats.times, Phase::kCombine);
  out = PermuteRows(out, layout->from_send_order);
  return Combine(out, routing.weight, routing.position).view(in.x.sizes());
}

// The global rank that names this process's trace file and metrics: data-
// parallel processes without a group must not share one.
int64_t MonitoringRank(const StepInputs& in) {
  std::optional<int64_t> group_rank;
  if (in.comm) group_rank = in.comm->global_rank(in.comm->rank());
  return runtime::MonitoringRank(group_rank);
}

// The host-side part of the outcome the loop above did not already fill.
void FillStats(const MoEOptions& options, const StepInputs& in, const at::Tensor& x, StepResult& result) {
  monitor::StepStats& s = result.stats;
  s.layer = {options.name(), options.num_experts(), options.d_model(), options.d_hidden(),
             options.gated(),  options.bias(),        x.element_size()};
  s.rank = MonitoringRank(in);
  s.training = in.training;
  s.kept = ToCountMatrix(result.counts);
  s.routed = ToCountMatrix(result.routed_matrix);
  s.routed_here = ToVectorOf(result.routed_counts);
  // On a GPU the losses stay on the device: reading them here would stall the stream before backward.
  if (result.balance_loss.device().is_cpu()) {
    s.balance_loss = result.balance_loss.item<double>();
    s.z_loss = result.z_loss.item<double>();
  }
  s.placed = in.state != nullptr;
  if (in.state) s.cost_model = in.state->placement().CostModel();
}

// What the ranks compare before this step's tokens move (layer_signature.h).
LayerSignature Signature(const MoEOptions& o, const StepInputs& in, const runtime::Settings& settings,
                         const ScheduleOptions& schedule, const at::Tensor& x, int64_t step) {
  LayerSignature s;
  s[LayerSignature::kName] = static_cast<int64_t>(Fnv1a64(o.name()));
  s[LayerSignature::kLayer] =
      static_cast<int64_t>(LayerHash(o.name(), o.num_experts(), o.d_model(), o.d_hidden(), x.scalar_type()));
  s[LayerSignature::kStep] = step;
  s[LayerSignature::kNumExperts] = o.num_experts();
  s[LayerSignature::kDModel] = o.d_model();
  s[LayerSignature::kDHidden] = o.d_hidden();
  s[LayerSignature::kDtype] = static_cast<int64_t>(x.scalar_type());
  s[LayerSignature::kGated] = o.gated();
  s[LayerSignature::kBias] = o.bias();
  s[LayerSignature::kTopK] = o.top_k();
  s[LayerSignature::kCustomExperts] = Custom(in) ? 1 : 0;
  s[LayerSignature::kPlacement] = in.state ? PolicyIndex(in.state->placement().policy_name()) : 0;
  s[LayerSignature::kSchedule] = schedule.overlap() ? 1 : 0;
  s[LayerSignature::kGroupSize] = schedule.group_size;
  s[LayerSignature::kOverlapDegree] = schedule.overlap_degree;
  s[LayerSignature::kRanksPerNode] = runtime::ClusterFromSettings(settings, in.comm->size()).ranks_per_node;
  s[LayerSignature::kTraining] = in.training;
  const bool grad = at::GradMode::is_enabled();
  s[LayerSignature::kInputRequiresGrad] = grad && in.x.requires_grad();
  bool params = in.gate_weight.requires_grad();
  for (const at::Tensor* t : {&in.experts.w1, &in.experts.w2, &in.experts.w3, &in.experts.b1, &in.experts.b2})
    params = params || (t->defined() && t->requires_grad());
  s[LayerSignature::kParamsRequireGrad] = grad && params;
  s[LayerSignature::kConfigHash] = static_cast<int64_t>(runtime::GlobalConfig().Hash());  // the environment's
  return s;
}

// A recomputation must route as the forward it repeats: its rows for each
// expert, this rank's row of the gathered matrix, must be the same.
void CheckReplay(const MoEOptions& options, const ForwardRecord& original, const at::Tensor& kept, int rank) {
  const at::Tensor before = original.kept_matrix[rank];
  if (at::equal(before, kept.to(before.scalar_type()))) return;
  throw Error(absl::FailedPreconditionError(absl::StrCat(
      "layer '", options.name(), "': the recomputed forward of step ", original.step,
      " (activation checkpointing) routed differently from the original (rows per expert [",
      absl::StrJoin(ToVectorOf(kept), ", "), "] now, [", absl::StrJoin(ToVectorOf(before), ", "),
      "] then); the recomputation must see the same input and random state: keep preserve_rng_state=True and "
      "do not change the layer's weights between forward and backward")));
}

}  // namespace

// A step from its start to its combine: what the phases hand each other.
struct PendingStep::Run {
  MoEOptions options;
  StepInputs in;
  at::Tensor x;  // [T, d_model]
  bool distributed = false;
  int rank = 0;
  ScheduleOptions schedule;
  LayerState::Begun begun;
  Routing routing;
  ExpertParams experts;  // with the copies this rank holds
  runtime::CommCounters before;
  TokenExchange exchange;  // the sequential schedule's
  at::Tensor rows;         // slot-major, for the experts
  std::chrono::steady_clock::time_point experts_start;
  StepResult result;
};

namespace {

// Route, gather the counts, plan, fetch copies: everything before the tokens move.
// The options are valid already (ValidatedOptions); the inputs change each call.
std::unique_ptr<PendingStep::Run> Start(const MoEOptions& options, const StepInputs& in) {
  ThrowIfError(ValidateInputs(options, in));
  using monitor::Phase;
  auto run = std::make_unique<PendingStep::Run>(PendingStep::Run{options, in});
  StepResult& result = run->result;
  const at::Tensor x = run->x = in.x.reshape({-1, options.d_model()}).contiguous();
  const bool distributed = run->distributed = in.comm && in.comm->size() > 1;
  const int rank = run->rank = distributed ? in.comm->rank() : 0;
  const runtime::Settings& settings = in.settings ? *in.settings : runtime::GlobalSettings();
  run->schedule = in.schedule.value_or(ScheduleOptions::FromSettings(settings));

  // A recomputation replays the step, bias, counts and plan of its original.
  if (in.state) run->begun = ValueOrThrow(in.state->Begin(in.training, options.name()));
  const ForwardRecord* original = run->begun.original.get();
  result.stats.recomputed = original != nullptr;
  result.stats.step = original ? original->step : in.state ? in.state->step() : 0;
  const at::Tensor& expert_bias =
      original && original->expert_bias.defined() ? original->expert_bias : in.expert_bias;

  const RouterOptions ro = MakeRouterOptions(options, in.training, result.stats.step);
  Routing& routing = run->routing;
  {
    monitor::ScopedPhase timer(result.stats.times, Phase::kGate);
    routing = ValueOrThrow(Route(x, in.gate_weight, in.gate_bias, expert_bias, ro));
  }
  result.counts = routing.kept_counts.unsqueeze(0);
  result.global_routed_counts = routing.routed_counts;
  result.routed_matrix = routing.routed_counts.unsqueeze(0);
  run->before = distributed ? in.comm->counters() : runtime::CommCounters{};
  std::vector<double> figures;  // DYNAMOE_CALIBRATE: every rank's phase times of its previous forward
  if (!original && !distributed && in.state) figures = in.state->placement().Figures();
  if (original) {
    CheckReplay(options, *original, routing.kept_counts, rank);
    result.counts = original->kept_matrix;
    result.routed_matrix = original->routed_matrix;
    result.global_routed_counts = original->routed_matrix.sum(0);
  } else if (distributed) {
    monitor::ScopedPhase timer(result.stats.times, Phase::kCountAllGather);
    ThrowIfError(CheckSignatures(*in.comm, Signature(options, in, settings, run->schedule, x, result.stats.step),
                                 options.name(), x.device()));
    CountMatrices m = ValueOrThrow(GatherCounts(*in.comm, routing.kept_counts, routing.routed_counts,
                                                options.name(), x.device(),
                                                in.state ? in.state->placement().Figures() : std::vector<double>{}));
    figures = std::move(m.figures);
    result.counts = m.kept;
    result.routed_matrix = m.routed;
    result.global_routed_counts = m.routed.sum(0);
  }
  {
    monitor::ScopedPhase timer(result.stats.times, Phase::kPolicy);
    if (original) {
      result.stats.plan = original->plan;
    } else {
      if (in.state) in.state->placement().Calibrate(figures, distributed ? in.comm->size() : 1);
      result.stats.plan = ChoosePlan(options, in, result.counts, x.element_size());
      if (distributed && settings.check_plan)
        ThrowIfError(
            CheckPlanAgreement(*in.comm, result.stats.plan.Hash(), options.name(), result.stats.step, x.device()));
    }
  }
  run->experts = in.experts;
  if (distributed && result.stats.plan.HasCopies()) {
    monitor::ScopedPhase timer(result.stats.times, Phase::kShadowBroadcast);
    const runtime::CommCounters c0 = in.comm->counters();
    run->experts = WithCopies(in.experts, result.stats.plan, in.comm, options.name());
    const runtime::CommCounters c1 = in.comm->counters();
    result.stats.weight_bytes_sent = c1.bytes_sent - c0.bytes_sent;
    result.stats.weight_bytes_received = c1.bytes_received - c0.bytes_received;
  }
  return run;
}

// The sequential schedule's dispatch: one all-to-all to the experts.
void DispatchRows(PendingStep::Run& run) {
  monitor::ScopedPhase timer(run.result.stats.times, monitor::Phase::kDispatch);
  run.exchange = run.distributed
                     ? TokenExchange::Across(run.result.counts, run.result.stats.plan, run.in.comm, run.options.name())
                     : TokenExchange::Local(run.routing.kept_counts);
  run.rows = run.exchange.Dispatch(Dispatch(run.x, run.routing.position, run.routing.num_rows));
}

// ... and its combine: one all-to-all back, then the weighted sum per token.
at::Tensor CombineRows(PendingStep::Run& run, const at::Tensor& out_rows) {
  monitor::ScopedPhase timer(run.result.stats.times, monitor::Phase::kCombine);
  return Combine(run.exchange.Combine(out_rows), run.routing.weight, run.routing.position).view(run.in.x.sizes());
}

// Custom experts: slot k of this rank is expert first + k.
int64_t FirstExpert(const PendingStep::Run& run) {
  return run.distributed ? run.in.comm->rank() * LocalExperts(run.options, run.in.comm) : 0;
}

// After the combine: traffic, losses, stats, the training step's side effects, the observers.
StepResult Finish(PendingStep::Run& run, at::Tensor y) {
  const MoEOptions& options = run.options;
  const StepInputs& in = run.in;
  StepResult& result = run.result;
  result.y = std::move(y);
  if (run.distributed) {
    const runtime::CommCounters after = in.comm->counters();
    result.stats.bytes_sent = after.bytes_sent - run.before.bytes_sent - result.stats.weight_bytes_sent;
    result.stats.bytes_received =
        after.bytes_received - run.before.bytes_received - result.stats.weight_bytes_received;
    result.stats.comm_seconds = after.wait_seconds - run.before.wait_seconds;
  }
  const Routing& routing = run.routing;
  result.balance_loss = routing.balance_loss;
  result.z_loss = routing.z_loss;
  result.aux_loss = routing.balance_loss * options.balance_loss_weight();
  if (options.z_loss_weight() > 0) result.aux_loss = result.aux_loss + routing.z_loss * options.z_loss_weight();
  result.routed_counts = routing.routed_counts;
  result.stats.dropped = routing.dropped;
  result.stats.capacity = routing.capacity;
  FillStats(options, in, run.x, result);
  if (result.stats.recomputed) return std::move(result);  // the original already counted, recorded and updated
  if (in.state) in.state->placement().Measured(result.stats.times);
  if (in.training && in.state)
    in.state->Commit(run.begun.id, result.stats.step, in.expert_bias, options.bias_update_rate(), result.counts,
                     result.routed_matrix, result.stats.plan);
  (in.observers ? *in.observers : runtime::ProcessStepObservers()).Notify(result.stats);
  return std::move(result);
}

}  // namespace

PendingStep::PendingStep(std::unique_ptr<Run> run) : run_(std::move(run)) {}
PendingStep::~PendingStep() = default;

const at::Tensor& PendingStep::input() const {
  DYNAMOE_THROW_IF(!run_, "PendingStep: already finished");
  return run_->in.x;
}

const at::Tensor& PendingStep::rows() const {
  DYNAMOE_THROW_IF(!run_, "PendingStep: already finished");
  return run_->rows;
}

std::vector<int64_t> PendingStep::slot_counts() const {
  DYNAMOE_THROW_IF(!run_, "PendingStep: already finished");
  return ToVectorOf(run_->exchange.slot_counts());
}

int64_t PendingStep::first_expert() const {
  DYNAMOE_THROW_IF(!run_, "PendingStep: already finished");
  return FirstExpert(*run_);
}

StepResult PendingStep::Finish(const std::vector<at::Tensor>& outputs) {
  DYNAMOE_THROW_IF(!run_, "PendingStep: already finished; each dispatched step finishes once");
  // Outputs of the wrong number or shape leave the step pending (on one rank
  // of a group, its peers then wait for the combine until DYNAMOE_TIMEOUT_S).
  const at::Tensor out_rows =
      JoinOutputs(run_->options, run_->rows, run_->exchange.slot_counts(), FirstExpert(*run_), outputs);
  std::unique_ptr<Run> run = std::move(run_);
  run->result.stats.times[monitor::Phase::kExperts] +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run->experts_start).count();
  return dynamoe::scheduler::Finish(*run, CombineRows(*run, out_rows));
}

c10::intrusive_ptr<PendingStep> BeginStep(const ValidatedOptions& validated, const StepInputs& in) {
  const MoEOptions& options = validated.get();
  DYNAMOE_THROW_IF(!Custom(in), options.name(), ": BeginStep is for custom experts (StepInputs::custom_experts)");
  std::unique_ptr<PendingStep::Run> run = Start(options, in);
  if (run->distributed && run->schedule.overlap()) {
    static std::once_flag warned;
    std::call_once(warned, [&] {
      DYNAMOE_LOG(kWarning) << options.name()
                            << ": DYNAMOE_SCHEDULE=overlap needs the built-in FFN experts; custom experts run the "
                               "sequential schedule";
    });
  }
  DispatchRows(*run);
  run->experts_start = std::chrono::steady_clock::now();
  return c10::make_intrusive<PendingStep>(std::move(run));
}

c10::intrusive_ptr<PendingStep> BeginStep(const MoEOptions& options, const StepInputs& in) {
  return BeginStep(ValueOrThrow(ValidatedOptions::Make(options)), in);
}

StepResult MoEForward(const ValidatedOptions& validated, const StepInputs& in) {
  const MoEOptions& options = validated.get();
  if (Custom(in)) {
    DYNAMOE_THROW_IF(!in.custom_expert, options.name(), ": custom experts without custom_expert: use BeginStep");
    // The same step as a caller's own experts (BeginStep), the callback in between.
    c10::intrusive_ptr<PendingStep> pending = BeginStep(validated, in);
    const std::vector<int64_t> counts = pending->slot_counts();
    std::vector<at::Tensor> outputs;
    const int64_t first = pending->first_expert();
    for (int64_t k = 0, off = 0; k < static_cast<int64_t>(counts.size()); off += counts[k], ++k)
      if (counts[k] > 0) outputs.push_back(in.custom_expert(first + k, pending->rows().narrow(0, off, counts[k])));
    return pending->Finish(outputs);
  }
  std::unique_ptr<PendingStep::Run> run = Start(options, in);
  if (run->distributed && run->schedule.overlap())
    return Finish(*run, OverlappedStep(options, in, run->schedule, run->x, run->routing, run->experts, run->result));
  DispatchRows(*run);
  at::Tensor out_rows;
  {
    monitor::ScopedPhase timer(run->result.stats.times, monitor::Phase::kExperts);
    out_rows = ExpertFFN(run->rows, run->exchange.slot_counts(), run->experts);
  }
  return Finish(*run, CombineRows(*run, out_rows));
}

StepResult MoEForward(const MoEOptions& options, const StepInputs& in) {
  return MoEForward(ValueOrThrow(ValidatedOptions::Make(options)), in);
}

}  // namespace dynamoe::scheduler
