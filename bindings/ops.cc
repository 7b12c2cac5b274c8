// TORCH_LIBRARY(dynamoe): the pieces (route, dispatch, expert_ffn, combine),
// the whole layer (the Layer class, layer_class.h) and configuration helpers. Every op is
// composite: its autograd comes from the C++ autograd functions it calls, so
// the same kernels serve C++ and Python. Errors surface as RuntimeError with
// the full dynamoe message.
#include <cmath>
#include <limits>
#include <set>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "bindings/boundary.h"
#include "bindings/layer_class.h"
#include "bindings/op_checks.h"
#include "common/status.h"
#include "kernels/kernels.h"
#include "config/config.h"
#include "runtime/process_group_communicator.h"
#include "runtime/rendezvous.h"
#include "config/settings.h"
#include "scheduler/expert_ffn.h"
#include "scheduler/layer_state.h"
#include "scheduler/moe_step.h"
#include "scheduler/router.h"

namespace dynamoe {
namespace {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

Tensor Or(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

void CheckFloating(const char* op, const char* arg, const Tensor& t) {
  const auto dt = t.scalar_type();
  DYNAMOE_THROW_IF(dt != at::kFloat && dt != at::kDouble && dt != at::kBFloat16 && !(dt == at::kHalf && t.is_cuda()),
                   op, ": ", arg, " must be float32, float64 or bfloat16 (float16 on CUDA), got ", c10::toString(dt));
}

using ops::Boundary;

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
    std::string name, const OptTensor& gate_bias, bool normalize_kept, std::string balance_loss_choices) {
  return Boundary([&] {
    ops::CheckTensor("route", "gate_weight", gate_weight, 2);
    MoEOptions o = MakeOptions(gate_weight.size(-1), 1, gate_weight.size(0), top_k, capacity_factor, min_capacity,
                               normalize_topk, use_rts, rts_seed, noisy_gate_policy, jitter_eps, check_finite, name);
    o.normalize_kept(normalize_kept).balance_loss_choices(balance_loss_choices);
    ThrowIfError(o.Validate());
    // The caller passes the capacity factor in force, so eval_capacity_factor stays unset.
    const scheduler::RouterOptions ro = scheduler::MakeRouterOptions(o, training, step);
    ops::CheckTensor("route", "x", x, 2);
    ops::CheckShape("route", "x", x, {x.size(0), gate_weight.size(1)});
    CheckFloating("route", "x", x);
    DYNAMOE_THROW_IF(gate_weight.device() != x.device(), "route: gate_weight is on ", gate_weight.device().str(),
                     " but x is on ", x.device().str());
    if (expert_bias.has_value() && expert_bias->defined()) {
      ops::CheckShape("route", "expert_bias", *expert_bias, {gate_weight.size(0)});
      DYNAMOE_THROW_IF(expert_bias->device() != x.device(), "route: expert_bias is on ",
                       expert_bias->device().str(), " but x is on ", x.device().str());
    }
    if (gate_bias.has_value() && gate_bias->defined()) {
      ops::CheckShape("route", "gate_bias", *gate_bias, {gate_weight.size(0)});
      DYNAMOE_THROW_IF(gate_bias->device() != x.device(), "route: gate_bias is on ", gate_bias->device().str(),
                       " but x is on ", x.device().str());
    }
    auto r = ValueOrThrow(scheduler::Route(x.contiguous(), gate_weight, Or(gate_bias), Or(expert_bias), ro));
    return std::make_tuple(r.expert_idx, r.weight, r.position, r.kept_counts, r.routed_counts, r.balance_loss,
                           r.z_loss);
  });
}

Tensor DispatchOp(const Tensor& x, const Tensor& position) {
  return Boundary([&] {
    ops::CheckTensor("dispatch", "x", x, 2);
    CheckFloating("dispatch", "x", x);
    ops::CheckTensor("dispatch", "position", position, 2, at::kLong);
    ops::CheckShape("dispatch", "position", position, {x.size(0), position.size(1)});
    DYNAMOE_THROW_IF(position.device() != x.device(), "dispatch: position is on ", position.device().str(),
                     " but x is on ", x.device().str());
    const int64_t num_rows = (position >= 0).sum().item<int64_t>();
    ops::CheckPositions("dispatch", position, num_rows);
    return scheduler::Dispatch(x, position, num_rows);
  });
}

Tensor CombineOp(const Tensor& rows, const Tensor& weight, const Tensor& position) {
  return Boundary([&] {
    ops::CheckTensor("combine", "rows", rows, 2);
    CheckFloating("combine", "rows", rows);
    ops::CheckTensor("combine", "position", position, 2, at::kLong);
    ops::CheckTensor("combine", "weight", weight, 2, scheduler::RouterDtype(rows.scalar_type()));
    ops::CheckShape("combine", "weight", weight, position.sizes().vec());
    DYNAMOE_THROW_IF(weight.device() != rows.device() || position.device() != rows.device(),
                     "combine: rows, weight and position must be on one device, got ", rows.device().str(), ", ",
                     weight.device().str(), " and ", position.device().str());
    ops::CheckPositions("combine", position, rows.size(0));
    return scheduler::Combine(rows, weight, position);
  });
}

Tensor ExpertFFNOp(const Tensor& rows, const Tensor& counts, const Tensor& w1, const Tensor& w2,
                   const OptTensor& w3, const OptTensor& b1, const OptTensor& b2, std::string activation) {
  return Boundary([&] {
    const char* op = "expert_ffn";
    ops::CheckTensor(op, "rows", rows, 2);
    CheckFloating(op, "rows", rows);
    ops::CheckTensor(op, "w1", w1, 3);
    const int64_t E = w1.size(0), d = rows.size(1), h = w1.size(2);
    ops::CheckShape(op, "w1", w1, {E, d, h});
    ops::CheckShape(op, "w2", w2, {E, h, d});
    ops::CheckLike(op, "w1", w1, "rows", rows);
    ops::CheckLike(op, "w2", w2, "rows", rows);
    const std::vector<std::pair<const char*, const OptTensor*>> optional = {{"w3", &w3}, {"b1", &b1}, {"b2", &b2}};
    for (const auto& [arg, t] : optional) {
      if (!t->has_value() || !(*t)->defined()) continue;
      ops::CheckShape(op, arg, **t, std::string(arg) == "w3" ? std::vector<int64_t>{E, d, h}
                                    : std::string(arg) == "b1" ? std::vector<int64_t>{E, h}
                                                               : std::vector<int64_t>{E, d});
      ops::CheckLike(op, arg, **t, "rows", rows);
    }
    const auto act = kernels::kActivationNames.Parse(activation, "activation");
    DYNAMOE_THROW_IF(!act.ok(), "expert_ffn: activation must be one of ", kernels::kActivationNames.Joined(),
                     ", got \"", activation, "\"");
    ops::CheckCounts(op, counts, E, rows.size(0));
    return scheduler::ExpertFFN(rows, counts.to(at::kCPU, at::kLong).contiguous(),
                                {w1, w2, Or(w3), Or(b1), Or(b2), *act});
  });
}

using CommPtr = c10::intrusive_ptr<runtime::Communicator>;
using StatePtr = c10::intrusive_ptr<scheduler::LayerState>;

// The caller's torch.distributed group, reached through torch's group
// registry by its group_name, as a communicator; dynamoe's
// keys (heartbeats, diagnosis) go to the store at host:port.
CommPtr GroupCommunicator(std::string group_name, std::string host, int64_t port, std::vector<int64_t> global_ranks,
                          std::string name) {
  return Boundary([&] {
    DYNAMOE_THROW_IF(port < 1 || port > 65535, "group_communicator: port must be in [1, 65535], got ", port);
    DYNAMOE_THROW_IF(host.empty(), "group_communicator: host is empty; expected the store's address");
    std::set<int64_t> seen;
    std::vector<int> members;
    for (int64_t r : global_ranks) {
      DYNAMOE_THROW_IF(r < 0 || r > std::numeric_limits<int>::max() || !seen.insert(r).second,
                       "group_communicator: global_ranks must be distinct world ranks >= 0, got ", r, " in [",
                       absl::StrJoin(global_ranks, ", "), "]");
      members.push_back(static_cast<int>(r));
    }
    auto group = ValueOrThrow(runtime::ResolveProcessGroup(group_name));
    const double timeout_s = runtime::GlobalSettings().timeout_s;
    auto store = ValueOrThrow(runtime::ConnectStore(
        host, static_cast<int>(port), false, static_cast<int>(global_ranks.size()),
        std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000))));
    return ValueOrThrow(runtime::CommunicatorFromProcessGroup(group, store, name, members));
  });
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
  return Boundary([&] {
    DYNAMOE_THROW_IF(top_k < 1 || top_k > kernels::kMaxTopK, "expert_capacity: top_k must be in [1, ",
                     kernels::kMaxTopK, "], got ", top_k);
    return ValueOrThrow(
        kernels::ExpertCapacity(num_tokens, static_cast<int>(top_k), num_experts, capacity_factor, min_capacity));
  });
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
  // Made by group_communicator (over a torch.distributed group of the caller's).
  m.class_<dynamoe::runtime::Communicator>("Communicator")
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
  // A layer's state across steps: its placement policy and last plan
  // (stats()["shadowed"], ...), its step counter, and the records that let a
  // checkpointing recomputation route as the original did. A Layer holds
  // one; dynamoe.MoE keeps it apart so that pickles carry it.
  m.class_<dynamoe::scheduler::LayerState>("LayerState")
      .def(torch::init([](std::string policy) {
        return dynamoe::Boundary([&] { return c10::make_intrusive<dynamoe::scheduler::LayerState>(policy); });
      }))
      .def("policy", [](const dynamoe::StatePtr& s) { return s->placement().policy_name(); })
      .def("shadowed", [](const dynamoe::StatePtr& s) { return s->placement().plan().Shadowed(); })
      .def("replicas", [](const dynamoe::StatePtr& s) { return s->placement().plan().ReplicaCounts(); })
      .def("plan_hash", [](const dynamoe::StatePtr& s) { return static_cast<int64_t>(s->placement().plan().Hash()); })
      .def("predicted_step_seconds",
           [](const dynamoe::StatePtr& s) { return s->placement().plan().predicted_step_seconds; })
      .def("step", [](const dynamoe::StatePtr& s) { return s->step(); })
      // copy.deepcopy, torch.save (through dynamoe.MoE's __getstate__) and
      // TorchScript keep the policy and the step; the records of forwards
      // awaiting recomputation and the policy's history start afresh.
      .def_pickle(
          [](const dynamoe::StatePtr& s) {
            return std::make_tuple(s->placement().policy_name(), s->step());
          },
          [](std::tuple<std::string, int64_t> t) {
            return dynamoe::Boundary([&] {
              auto s = c10::make_intrusive<dynamoe::scheduler::LayerState>(std::get<0>(t));
              s->set_step(std::get<1>(t));
              return s;
            });
          })
      .def("set_step", [](const dynamoe::StatePtr& s, int64_t step) {
        dynamoe::Boundary([&] {
          DYNAMOE_THROW_IF(step < 0, "LayerState.set_step: step must be >= 0, got ", step);
          s->set_step(step);
          return 0;
        });
      });
  dynamoe::ops::RegisterLayerClasses(m);
  m.def(
      "route(Tensor x, Tensor gate_weight, Tensor? expert_bias, int top_k, float capacity_factor, "
      "int min_capacity, bool normalize_topk, bool use_rts, int rts_seed, int step, str noisy_gate_policy, "
      "float jitter_eps, bool check_finite, bool training, str name, Tensor? gate_bias=None, "
      "bool normalize_kept=False, str balance_loss_choices=\"all\") -> (Tensor expert_idx, Tensor weight, "
      "Tensor position, Tensor kept_counts, Tensor routed_counts, Tensor balance_loss, Tensor z_loss)",
      &dynamoe::Route);
  m.def("dispatch(Tensor x, Tensor position) -> Tensor", &dynamoe::DispatchOp);
  m.def("combine(Tensor rows, Tensor weight, Tensor position) -> Tensor", &dynamoe::CombineOp);
  m.def(
      "expert_ffn(Tensor rows, Tensor counts, Tensor w1, Tensor w2, Tensor? w3, Tensor? b1, Tensor? b2, "
      "str activation) -> Tensor",
      &dynamoe::ExpertFFNOp);
  m.def("group_communicator", &dynamoe::GroupCommunicator);
  m.def("config_describe() -> str", &dynamoe::ConfigDescribe);
  m.def("config_hash() -> str", &dynamoe::ConfigHash);
  m.def("config_get(str name) -> str", &dynamoe::ConfigGet);
  m.def("phase_names() -> str", &dynamoe::PhaseNames);
  // For benchmarks comparing both in one process: overrides DYNAMOE_GROUPED_GEMM (loop, grouped) until
  // called with "" (the setting's again).
  m.def("set_gemm_algorithm(str name) -> ()", [](std::string name) {
    dynamoe::Boundary([&] {
      if (name.empty()) dynamoe::scheduler::SetGemmAlgorithm(std::nullopt);
      else dynamoe::scheduler::SetGemmAlgorithm(dynamoe::ValueOrThrow(dynamoe::runtime::ParseGemmAlgorithm(name)));
      return 0;
    });
  });
  // True inside a backward pass (e.g. an activation-checkpointing recompute); torch 1.x has no Python API for it.
  m.def("in_backward() -> bool", [] { return dynamoe::scheduler::InBackwardPass(); });
  m.def("default_layer_name() -> str", [] { return dynamoe::scheduler::NextDefaultLayerName(); });
  m.def("expert_capacity(int num_tokens, int top_k, int num_experts, float capacity_factor, int min_capacity) -> int",
        &dynamoe::ExpertCapacityOp);
  m.def("rts_priority(int seed, int step, int token, int choice) -> float", &dynamoe::RtsPriorityOp);
}
