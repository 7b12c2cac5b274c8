// TORCH_LIBRARY(dynamoe): the pieces (route, dispatch, expert_ffn, combine),
// the whole step (moe_forward) and configuration helpers. Every op is
// composite: its autograd comes from the C++ autograd functions it calls, so
// the same kernels serve C++ and Python. Errors surface as RuntimeError with
// the full dynamoe message.
#include <limits>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "kernels/kernels.h"
#include "runtime/config.h"
#include "runtime/rendezvous.h"
#include "scheduler/moe_step.h"
#include "scheduler/router.h"

namespace dynamoe {
namespace {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

Tensor Or(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

// Runs f and turns any dynamoe::Error into a c10::Error whose message is the
// full dynamoe message (Python then sees RuntimeError with that text).
template <typename F>
auto Boundary(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    TORCH_CHECK(false, e.what());
  }
}

MoEOptions MakeOptions(int64_t d_model, int64_t d_hidden, int64_t num_experts, int64_t top_k,
                       double capacity_factor, int64_t min_capacity, bool normalize_topk, bool use_rts,
                       int64_t rts_seed, const std::string& noisy_gate_policy, double jitter_eps,
                       bool check_finite, const std::string& name) {
  return MoEOptions(d_model, d_hidden, num_experts)
      .top_k(top_k)
      .capacity_factor(capacity_factor)
      .min_capacity(min_capacity)
      .normalize_topk(normalize_topk)
      .use_rts(use_rts)
      .rts_seed(rts_seed)
      .noisy_gate_policy(noisy_gate_policy)
      .jitter_eps(jitter_eps)
      .check_finite(check_finite)
      .name(name);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> Route(
    const Tensor& x, const Tensor& gate_weight, const OptTensor& expert_bias, int64_t top_k,
    double capacity_factor, int64_t min_capacity, bool normalize_topk, bool use_rts, int64_t rts_seed,
    int64_t step, std::string noisy_gate_policy, double jitter_eps, bool check_finite, bool training,
    std::string name) {
  return Boundary([&] {
    const MoEOptions o = MakeOptions(gate_weight.size(-1), 1, gate_weight.size(0), top_k, capacity_factor, min_capacity,
                                     normalize_topk, use_rts, rts_seed, noisy_gate_policy, jitter_eps,
                                     check_finite, name);
    ThrowIfError(o.Validate());
    // The caller passes the capacity factor in force, so eval_capacity_factor stays unset.
    const scheduler::RouterOptions ro = scheduler::MakeRouterOptions(o, training, step);
    DYNAMOE_THROW_IF(x.dim() != 2 || x.size(1) != gate_weight.size(1), name, ": route expects x [tokens, ",
                     gate_weight.size(1), "]");
    auto r = ValueOrThrow(scheduler::Route(x.contiguous(), gate_weight, Or(expert_bias), ro));
    return std::make_tuple(r.expert_idx, r.weight, r.position, r.kept_counts, r.routed_counts, r.balance_loss,
                           r.z_loss);
  });
}

Tensor DispatchOp(const Tensor& x, const Tensor& position) {
  return Boundary([&] {
    DYNAMOE_THROW_IF(x.dim() != 2 || position.dim() != 2 || position.size(0) != x.size(0) ||
                         position.scalar_type() != at::kLong,
                     "dispatch expects x [tokens, d] and position [tokens, top_k] int64");
    const int64_t num_rows = (position >= 0).sum().item<int64_t>();
    return scheduler::Dispatch(x, position, num_rows);
  });
}

Tensor CombineOp(const Tensor& rows, const Tensor& weight, const Tensor& position) {
  return Boundary([&] {
    DYNAMOE_THROW_IF(rows.dim() != 2 || weight.sizes() != position.sizes() || position.scalar_type() != at::kLong,
                     "combine expects rows [rows, d], weight and position [tokens, top_k] (int64 position)");
    DYNAMOE_THROW_IF(weight.scalar_type() != scheduler::RouterDtype(rows.scalar_type()), "combine: weight must be ",
                     c10::toString(scheduler::RouterDtype(rows.scalar_type())), " for ",
                     c10::toString(rows.scalar_type()), " rows, got ", c10::toString(weight.scalar_type()));
    return scheduler::Combine(rows, weight, position);
  });
}

Tensor ExpertFFNOp(const Tensor& rows, const Tensor& counts, const Tensor& w1, const Tensor& w2,
                   const OptTensor& w3, const OptTensor& b1, const OptTensor& b2, std::string activation) {
  return Boundary([&] {
    DYNAMOE_THROW_IF(counts.dim() != 1 || counts.size(0) != w1.size(0) || counts.sum().item<int64_t>() != rows.size(0),
                     "expert_ffn: counts must be [num_experts] and sum to the number of rows (", rows.size(0), ")");
    return scheduler::ExpertFFN(rows, counts.to(at::kLong), {w1, w2, Or(w3), Or(b1), Or(b2), activation});
  });
}

using CommPtr = c10::intrusive_ptr<runtime::Communicator>;
using PlacementPtr = c10::intrusive_ptr<scheduler::PlacementState>;

// Joins the group whose store is hosted at host:port (dynamoe/distributed.py
// hosts it on the group's rank 0) and creates its communicator.
CommPtr MakeCommunicator(std::string host, int64_t port, int64_t rank, std::vector<int64_t> global_ranks,
                         std::string name, std::string backend) {
  return Boundary([&] {
    const double timeout_s = runtime::GlobalConfig().GetFloat("DYNAMOE_TIMEOUT_S");
    auto store = ValueOrThrow(runtime::ConnectStore(
        host, static_cast<int>(port), false, static_cast<int>(global_ranks.size()),
        std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000))));
    std::vector<int> members(global_ranks.begin(), global_ranks.end());
    return ValueOrThrow(runtime::CreateGroupCommunicator(store, name, static_cast<int>(rank), members, backend,
                                                         members.front()));
  });
}

// Returns (y, aux_loss, counts [ep_size, E], routed_counts [E], global_routed_counts [E], info)
// where info is float64 [dropped, capacity, balance_loss, z_loss, bytes_sent,
// bytes_received, comm_seconds, seconds per phase..., weight_bytes_sent,
// weight_bytes_received, overlapped, pipeline_stages]. The placement's plan is
// read from the Placement object. schedule "" / group_size and
// overlap_degree < 0 keep the environment's (DYNAMOE_SCHEDULE, ...).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> MoEForwardOp(
    const Tensor& x, const Tensor& gate_weight, const OptTensor& expert_bias, const Tensor& w1, const Tensor& w2,
    const OptTensor& w3, const OptTensor& b1, const OptTensor& b2, std::string activation, int64_t top_k,
    double capacity_factor, int64_t min_capacity, bool normalize_topk, bool use_rts, int64_t rts_seed,
    int64_t step, std::string noisy_gate_policy, double jitter_eps, double balance_loss_weight,
    double z_loss_weight, bool check_finite, bool training, std::string name, c10::optional<CommPtr> comm,
    c10::optional<PlacementPtr> placement, std::string schedule, int64_t group_size, int64_t overlap_degree) {
  return Boundary([&] {
    MoEOptions o = MakeOptions(gate_weight.size(-1), w1.dim() == 3 ? w1.size(2) : 0, gate_weight.size(0), top_k,
                               capacity_factor, min_capacity, normalize_topk, use_rts, rts_seed,
                               noisy_gate_policy, jitter_eps, check_finite, name);
    o.activation(activation).gated(w3.has_value()).bias(b1.has_value() || b2.has_value());
    o.balance_loss_weight(balance_loss_weight).z_loss_weight(z_loss_weight);
    scheduler::StepInputs in;
    in.x = x;
    in.gate_weight = gate_weight;
    in.expert_bias = Or(expert_bias);
    in.experts = {w1, w2, Or(w3), Or(b1), Or(b2), activation};
    in.training = training;
    in.step = step;
    if (comm.has_value()) in.comm = *comm;
    if (placement.has_value()) in.placement = *placement;
    in.schedule = scheduler::ScheduleOptions::Make(schedule, group_size, overlap_degree);
    scheduler::StepResult r = scheduler::MoEForward(o, in);
    // On a GPU the losses stay on the device (reading them here would stall the
    // stream before backward); Python reads `losses` when stats() asks.
    const bool host = r.balance_loss.device().is_cpu();
    const double nan = std::numeric_limits<double>::quiet_NaN();
    std::vector<double> info = {static_cast<double>(r.dropped), static_cast<double>(r.capacity),
                                host ? r.balance_loss.item<double>() : nan, host ? r.z_loss.item<double>() : nan,
                                static_cast<double>(r.bytes_sent), static_cast<double>(r.bytes_received),
                                r.comm_seconds};
    info.insert(info.end(), r.times.seconds.begin(), r.times.seconds.end());
    info.push_back(static_cast<double>(r.weight_bytes_sent));
    info.push_back(static_cast<double>(r.weight_bytes_received));
    info.push_back(r.overlapped ? 1.0 : 0.0);
    info.push_back(static_cast<double>(r.pipeline_stages));
    return std::make_tuple(r.y, r.aux_loss, r.counts, r.routed_counts, r.global_routed_counts,
                           at::tensor(info, at::TensorOptions().dtype(at::kDouble)),
                           at::stack({r.balance_loss.detach(), r.z_loss.detach().to(r.balance_loss.scalar_type())}));
  });
}

void ValidateOptionsOp(int64_t d_model, int64_t d_hidden, int64_t num_experts, int64_t top_k,
                       double capacity_factor, c10::optional<double> eval_capacity_factor, int64_t min_capacity,
                       std::string activation, std::string noisy_gate_policy, double jitter_eps,
                       double balance_loss_weight, double z_loss_weight, double bias_update_rate, std::string name) {
  Boundary([&] {
    MoEOptions o(d_model, d_hidden, num_experts);
    o.top_k(top_k).capacity_factor(capacity_factor).min_capacity(min_capacity).activation(activation);
    if (eval_capacity_factor.has_value()) o.eval_capacity_factor(*eval_capacity_factor);
    o.noisy_gate_policy(noisy_gate_policy).jitter_eps(jitter_eps).balance_loss_weight(balance_loss_weight);
    o.z_loss_weight(z_loss_weight).bias_update_rate(bias_update_rate).name(name);
    ThrowIfError(o.Validate());
    return 0;
  });
}

void UpdateExpertBiasOp(Tensor bias, const Tensor& counts, double rate) {
  scheduler::UpdateExpertBias(bias, counts, rate);
}

std::string ConfigDescribe() {
  return Boundary([] { return runtime::GlobalConfig().Describe(); });
}
std::string ConfigGet(std::string name) {
  return Boundary([&] {
    for (const auto& e : runtime::ConfigTable())
      if (e.name == name) return runtime::GlobalConfig().Get(name);
    DYNAMOE_THROW_IF(true, "config_get: unknown variable ", name);
    return std::string();
  });
}
std::string ConfigHash() {
  return Boundary([] { return absl::StrFormat("%016x", runtime::GlobalConfig().Hash()); });
}
int64_t ExpertCapacityOp(int64_t num_tokens, int64_t top_k, int64_t num_experts, double capacity_factor,
                         int64_t min_capacity) {
  return kernels::ExpertCapacity(num_tokens, static_cast<int>(top_k), num_experts, capacity_factor, min_capacity);
}

double RtsPriorityOp(int64_t seed, int64_t step, int64_t token, int64_t choice) {
  return kernels::RtsPriority(static_cast<uint64_t>(seed), step, token, static_cast<int>(choice));
}

std::string PhaseNames() {
  std::string out;
  for (const char* p : monitor::kPhaseNames) absl::StrAppend(&out, out.empty() ? "" : ",", p);
  return out;
}

}  // namespace
}  // namespace dynamoe

TORCH_LIBRARY(dynamoe, m) {
  m.class_<dynamoe::runtime::Communicator>("Communicator")
      .def(torch::init(&dynamoe::MakeCommunicator))
      .def("rank", [](const dynamoe::CommPtr& c) { return static_cast<int64_t>(c->rank()); })
      .def("size", [](const dynamoe::CommPtr& c) { return static_cast<int64_t>(c->size()); })
      .def("name", [](const dynamoe::CommPtr& c) { return c->name(); })
      .def("backend", [](const dynamoe::CommPtr& c) { return c->backend(); })
      .def("all_reduce", [](const dynamoe::CommPtr& c, at::Tensor t) {
        dynamoe::Boundary([&] {
          dynamoe::ThrowIfError(c->AllReduce(t, {"dynamoe", "gradients", true}));
          return 0;
        });
      })
      .def("counters", [](const dynamoe::CommPtr& c) {
        const auto k = c->counters();
        return std::vector<double>{static_cast<double>(k.collectives), static_cast<double>(k.bytes_sent),
                                   static_cast<double>(k.bytes_received), k.wait_seconds,
                                   static_cast<double>(k.waits), static_cast<double>(k.idle_waits)};
      });
  // A layer's placement policy and its last plan (stats()["shadowed"], ...).
  m.class_<dynamoe::scheduler::PlacementState>("Placement")
      .def(torch::init([](std::string policy) {
        return dynamoe::Boundary([&] { return c10::make_intrusive<dynamoe::scheduler::PlacementState>(policy); });
      }))
      .def("policy", [](const dynamoe::PlacementPtr& p) { return p->policy_name(); })
      .def("shadowed", [](const dynamoe::PlacementPtr& p) { return p->plan().Shadowed(); })
      .def("replicas", [](const dynamoe::PlacementPtr& p) { return p->plan().ReplicaCounts(); })
      .def("plan_hash", [](const dynamoe::PlacementPtr& p) { return static_cast<int64_t>(p->plan().Hash()); })
      .def("predicted_step_seconds", [](const dynamoe::PlacementPtr& p) { return p->plan().predicted_step_seconds; });
  m.def(
      "route(Tensor x, Tensor gate_weight, Tensor? expert_bias, int top_k, float capacity_factor, "
      "int min_capacity, bool normalize_topk, bool use_rts, int rts_seed, int step, str noisy_gate_policy, "
      "float jitter_eps, bool check_finite, bool training, str name) -> (Tensor expert_idx, Tensor weight, "
      "Tensor position, Tensor kept_counts, Tensor routed_counts, Tensor balance_loss, Tensor z_loss)",
      &dynamoe::Route);
  m.def("dispatch(Tensor x, Tensor position) -> Tensor", &dynamoe::DispatchOp);
  m.def("combine(Tensor rows, Tensor weight, Tensor position) -> Tensor", &dynamoe::CombineOp);
  m.def(
      "expert_ffn(Tensor rows, Tensor counts, Tensor w1, Tensor w2, Tensor? w3, Tensor? b1, Tensor? b2, "
      "str activation) -> Tensor",
      &dynamoe::ExpertFFNOp);
  m.def(
      "moe_forward(Tensor x, Tensor gate_weight, Tensor? expert_bias, Tensor w1, Tensor w2, Tensor? w3, "
      "Tensor? b1, Tensor? b2, str activation, int top_k, float capacity_factor, int min_capacity, "
      "bool normalize_topk, bool use_rts, int rts_seed, int step, str noisy_gate_policy, float jitter_eps, "
      "float balance_loss_weight, float z_loss_weight, bool check_finite, bool training, str name, "
      "__torch__.torch.classes.dynamoe.Communicator? comm=None, "
      "__torch__.torch.classes.dynamoe.Placement? placement=None, str schedule=\"\", int group_size=-1, "
      "int overlap_degree=-1) -> (Tensor y, Tensor aux_loss, Tensor counts, "
      "Tensor routed_counts, Tensor global_routed_counts, Tensor info, Tensor losses)",
      &dynamoe::MoEForwardOp);
  m.def(
      "validate_options(int d_model, int d_hidden, int num_experts, int top_k, float capacity_factor, "
      "float? eval_capacity_factor, int min_capacity, str activation, str noisy_gate_policy, float jitter_eps, "
      "float balance_loss_weight, float z_loss_weight, float bias_update_rate, str name) -> ()",
      &dynamoe::ValidateOptionsOp);
  m.def("update_expert_bias(Tensor(a!) bias, Tensor counts, float rate) -> ()", &dynamoe::UpdateExpertBiasOp);
  m.def("config_describe() -> str", &dynamoe::ConfigDescribe);
  m.def("config_hash() -> str", &dynamoe::ConfigHash);
  m.def("config_get(str name) -> str", &dynamoe::ConfigGet);
  m.def("phase_names() -> str", &dynamoe::PhaseNames);
  m.def("expert_capacity(int num_tokens, int top_k, int num_experts, float capacity_factor, int min_capacity) -> int",
        &dynamoe::ExpertCapacityOp);
  m.def("rts_priority(int seed, int step, int token, int choice) -> float", &dynamoe::RtsPriorityOp);
}
