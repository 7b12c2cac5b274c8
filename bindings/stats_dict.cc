#include "bindings/stats_dict.h"

#include <vector>

namespace dynamoe {
namespace {

// Dict<str, IValue> has no plain constructor: build it untyped, then type it.
c10::Dict<std::string, c10::IValue> NewDict() {
  return c10::impl::toTypedDict<std::string, c10::IValue>(
      c10::impl::GenericDict(c10::StringType::get(), c10::AnyType::get()));
}

c10::IValue CostModel(const std::optional<monitor::CostModelStats>& c) {
  if (!c) return c10::IValue();
  c10::Dict<std::string, c10::IValue> d = NewDict();
  d.insert("calibrating", c->calibrating);
  d.insert("flops", c->flops);
  d.insert("intra_node_bytes_per_second", c->intra_node_bytes_per_second);
  d.insert("inter_node_bytes_per_second", c->inter_node_bytes_per_second);
  d.insert("intra_node_latency_seconds", c->intra_node_latency_seconds);
  d.insert("inter_node_latency_seconds", c->inter_node_latency_seconds);
  if (c->calibrating) {  // the fit's own figures
    d.insert("fixed_seconds", c->fixed_seconds);
    d.insert("error", c->error ? c10::IValue(*c->error) : c10::IValue());
    d.insert("fitted_steps", c->fitted_steps);
  }
  return d;
}

}  // namespace

c10::Dict<std::string, c10::IValue> StatsDict(const monitor::StepStats& s) {
  c10::Dict<std::string, c10::IValue> d = NewDict();
  d.insert("step", s.step);
  d.insert("recomputed", s.recomputed);
  d.insert("dropped", s.dropped);
  d.insert("capacity", s.capacity);
  d.insert("balance_loss", s.balance_loss);
  d.insert("z_loss", s.z_loss);
  c10::Dict<std::string, double> phases;
  for (const auto& [name, seconds] : s.phase_seconds()) phases.insert(name, seconds);
  d.insert("phase_seconds", phases);
  d.insert("bytes_sent", s.bytes_sent);
  d.insert("bytes_received", s.bytes_received);
  d.insert("comm_seconds", s.comm_seconds);
  d.insert("shadowed", c10::List<int64_t>(s.shadowed()));
  d.insert("replicas", c10::List<int64_t>(s.replicas()));
  d.insert("plan_hash", static_cast<int64_t>(s.plan_hash()));
  d.insert("predicted_step_seconds", s.predicted_step_seconds());
  d.insert("weight_bytes_sent", s.weight_bytes_sent);
  d.insert("weight_bytes_received", s.weight_bytes_received);
  d.insert("overlapped", s.overlapped);
  d.insert("pipeline_stages", s.pipeline_stages);
  d.insert("cost_model", CostModel(s.cost_model));
  return d;
}

}  // namespace dynamoe
