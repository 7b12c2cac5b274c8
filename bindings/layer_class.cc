#include "bindings/layer_class.h"

#include <ATen/ATen.h>
#include <torch/custom_class.h>

#include <set>

#include "absl/strings/str_join.h"
#include "bindings/boundary.h"
#include "bindings/stats_dict.h"
#include "scheduler/layer.h"

namespace dynamoe::ops {
namespace {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;
using LayerPtr = c10::intrusive_ptr<scheduler::Layer>;
using PendingPtr = c10::intrusive_ptr<scheduler::PendingStep>;
using StatsDictT = c10::Dict<std::string, c10::IValue>;
// (y, aux_loss, counts [ep_size, E], routed_counts [E], global_routed_counts [E], stats, losses [balance, z])
using StepTuple = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, StatsDictT, Tensor>;

Tensor Or(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

// One option by its MoEOptions name, typed; the error names what was expected.
class OptionReader {
 public:
  explicit OptionReader(const StatsDictT& d) : d_(d) {}
  const c10::IValue* Find(const std::string& key) {
    seen_.insert(key);
    auto it = d_.find(key);
    return it == d_.end() || it->value().isNone() ? nullptr : &it->value();
  }
  int64_t Int(const std::string& key, int64_t fallback) {
    const c10::IValue* v = Find(key);
    if (!v) return fallback;
    DYNAMOE_THROW_IF(!v->isInt(), "Layer: option ", key, " must be an int, got ", v->tagKind());
    return v->toInt();
  }
  std::optional<double> Double(const std::string& key) {
    const c10::IValue* v = Find(key);
    if (!v) return std::nullopt;
    DYNAMOE_THROW_IF(!v->isDouble() && !v->isInt(), "Layer: option ", key, " must be a number, got ", v->tagKind());
    return v->isInt() ? static_cast<double>(v->toInt()) : v->toDouble();
  }
  std::optional<bool> Bool(const std::string& key) {
    const c10::IValue* v = Find(key);
    if (!v) return std::nullopt;
    DYNAMOE_THROW_IF(!v->isBool(), "Layer: option ", key, " must be a bool, got ", v->tagKind());
    return v->toBool();
  }
  std::optional<std::string> String(const std::string& key) {
    const c10::IValue* v = Find(key);
    if (!v) return std::nullopt;
    DYNAMOE_THROW_IF(!v->isString(), "Layer: option ", key, " must be a str, got ", v->tagKind());
    return v->toStringRef();
  }
  // Every key was read: a misspelt option is an error, not a silent default.
  void CheckAllRead() const {
    std::vector<std::string> unknown;
    for (const auto& kv : d_)
      if (!seen_.count(kv.key())) unknown.push_back(kv.key());
    DYNAMOE_THROW_IF(!unknown.empty(), "Layer: unknown option(s) ", absl::StrJoin(unknown, ", "),
                     "; expected MoEOptions names: ", absl::StrJoin(seen_, ", "));
  }

 private:
  const StatsDictT& d_;
  std::set<std::string> seen_;
};

MoEOptions OptionsFromDict(const StatsDictT& d) {
  OptionReader r(d);
  MoEOptions o(r.Int("d_model", 0), r.Int("d_hidden", 0), r.Int("num_experts", 0));
  o.top_k(r.Int("top_k", o.top_k())).min_capacity(r.Int("min_capacity", o.min_capacity()));
  o.rts_seed(r.Int("rts_seed", o.rts_seed()));
  if (auto v = r.Double("capacity_factor")) o.capacity_factor(*v);
  o.eval_capacity_factor(r.Double("eval_capacity_factor"));
  o.normalize_topk(r.Bool("normalize_topk"));
  for (auto [key, set] : std::initializer_list<std::pair<const char*, MoEOptions& (MoEOptions::*)(const bool&)>>{
           {"normalize_kept", &MoEOptions::normalize_kept}, {"router_bias", &MoEOptions::router_bias},
           {"gated", &MoEOptions::gated}, {"bias", &MoEOptions::bias}, {"use_rts", &MoEOptions::use_rts},
           {"use_residual", &MoEOptions::use_residual}, {"check_finite", &MoEOptions::check_finite}})
    if (auto v = r.Bool(key)) (o.*set)(*v);
  for (auto [key, set] :
       std::initializer_list<std::pair<const char*, MoEOptions& (MoEOptions::*)(const std::string&)>>{
           {"balance_loss_choices", &MoEOptions::balance_loss_choices}, {"activation", &MoEOptions::activation},
           {"noisy_gate_policy", &MoEOptions::noisy_gate_policy}, {"name", &MoEOptions::name}})
    if (auto v = r.String(key)) (o.*set)(*v);
  for (auto [key, set] : std::initializer_list<std::pair<const char*, MoEOptions& (MoEOptions::*)(const double&)>>{
           {"jitter_eps", &MoEOptions::jitter_eps}, {"balance_loss_weight", &MoEOptions::balance_loss_weight},
           {"z_loss_weight", &MoEOptions::z_loss_weight}, {"bias_update_rate", &MoEOptions::bias_update_rate}})
    if (auto v = r.Double(key)) (o.*set)(*v);
  r.CheckAllRead();
  return o;
}

scheduler::ResidualParams ResidualOf(const scheduler::Layer& layer, const std::vector<Tensor>& t) {
  if (t.empty()) return {};
  DYNAMOE_THROW_IF(t.size() != 6, layer.options().name(), ": residual must be [fc1.weight, fc1.bias, fc2.weight, ",
                   "fc2.bias, coef.weight, coef.bias] or empty, got ", t.size(), " tensors");
  return {t[0], t[1], t[2], t[3], t[4], t[5]};
}

StepTuple TupleOf(const scheduler::StepResult& r) {
  return std::make_tuple(r.y, r.aux_loss, r.counts, r.routed_counts, r.global_routed_counts, StatsDict(r.stats),
                         at::stack({r.balance_loss.detach(), r.z_loss.detach().to(r.balance_loss.scalar_type())}));
}

scheduler::LayerTensors TensorsOf(const Tensor& gate_weight, const OptTensor& gate_bias, const OptTensor& expert_bias,
                                  scheduler::ExpertParams experts) {
  return {gate_weight, Or(gate_bias), Or(expert_bias), std::move(experts), {}};
}

}  // namespace

void RegisterLayerClasses(torch::Library& m) {
  // A custom-expert step between dispatch and combine: the caller runs each
  // local expert on its rows, then Layer.finish.
  m.class_<scheduler::PendingStep>("PendingStep")
      .def("rows", [](const PendingPtr& p) { return Boundary([&] { return p->rows(); }); })
      .def("slot_counts", [](const PendingPtr& p) { return Boundary([&] { return p->slot_counts(); }); })
      .def("first_expert", [](const PendingPtr& p) { return Boundary([&] { return p->first_expert(); }); });
  m.class_<scheduler::Layer>("Layer")
      .def(torch::init([](StatsDictT options, c10::intrusive_ptr<scheduler::LayerState> state,
                          c10::optional<c10::intrusive_ptr<runtime::Communicator>> comm, bool custom_experts) {
        return Boundary([&] {
          return c10::make_intrusive<scheduler::Layer>(OptionsFromDict(options), comm.has_value() ? *comm : runtime::CommunicatorPtr(), state,
                                                       custom_experts);
        });
      }))
      .def("name", [](const LayerPtr& l) { return l->options().name(); })
      .def("num_local_experts", [](const LayerPtr& l) { return l->num_local_experts(); })
      .def("first_expert", [](const LayerPtr& l) { return l->first_expert(); })
      .def("set_schedule",
           [](const LayerPtr& l, std::string kind, c10::optional<int64_t> group_size,
              c10::optional<int64_t> overlap_degree) {
             Boundary([&] {
               l->set_schedule(kind, group_size ? std::optional<int64_t>(*group_size) : std::nullopt,
                               overlap_degree ? std::optional<int64_t>(*overlap_degree) : std::nullopt);
               return 0;
             });
           })
      .def("schedule", [](const LayerPtr& l) { return Boundary([&] { return l->schedule().Describe(); }); })
      .def("has_own_schedule", [](const LayerPtr& l) { return l->has_own_schedule(); })
      .def("forward",
           [](const LayerPtr& l, Tensor x, Tensor gate_weight, OptTensor gate_bias, OptTensor expert_bias,
              OptTensor w1, OptTensor w2, OptTensor w3, OptTensor b1, OptTensor b2, bool training,
              std::vector<Tensor> residual) {
             return Boundary([&] {
               scheduler::LayerTensors t = TensorsOf(gate_weight, gate_bias, expert_bias,
                                                     {Or(w1), Or(w2), Or(w3), Or(b1), Or(b2), l->activation()});
               t.residual = ResidualOf(*l, residual);
               return TupleOf(l->Forward(x, t, training));
             });
           })
      .def("dispatch",
           [](const LayerPtr& l, Tensor x, Tensor gate_weight, OptTensor gate_bias, OptTensor expert_bias,
              bool training) {
             return Boundary([&] { return l->Dispatch(x, TensorsOf(gate_weight, gate_bias, expert_bias, {}), training); });
           })
      .def("finish", [](const LayerPtr& l, PendingPtr p, std::vector<Tensor> outputs, std::vector<Tensor> residual) {
        return Boundary([&] { return TupleOf(l->Finish(*p, outputs, ResidualOf(*l, residual))); });
      });
}

}  // namespace dynamoe::ops
