// The step tells observers what it did: the StepStats they get are the
// step's own figures, and the metrics report and the trace record are
// derived from them.
#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <vector>

#include "bindings/moe_layer.h"
#include "common/status.h"
#include "monitor/metrics_report.h"
#include "monitor/trace_recorder.h"
#include "config/step_observers.h"
#include "scheduler/moe_step.h"

namespace dynamoe {
namespace {

using torch::Tensor;

struct Recorder : monitor::StepObserver {
  std::vector<monitor::StepStats> seen;
  void OnStep(const monitor::StepStats& s) override { seen.push_back(s); }
};

std::vector<int64_t> Values(const Tensor& t) {
  const Tensor c = t.to(torch::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

scheduler::StepInputs InputsOf(MoELayer& m, const Tensor& x, bool training) {
  scheduler::StepInputs in;
  in.x = x;
  in.gate_weight = m->gate->weight;
  in.expert_bias = m->expert_bias;
  in.experts = {m->w1, m->w2, {}, {}, {}, m->runtime().activation()};
  in.training = training;
  return in;
}

TEST(StepObservers, AStepsOwnListHearsEachForwardWithTheStepsFigures) {
  torch::manual_seed(1);
  MoELayer m(MoEOptions(8, 16, 4).top_k(2).capacity_factor(0.5).min_capacity(1).name("observed"));
  monitor::StepObservers mine;
  auto heard = std::make_shared<Recorder>(), process = std::make_shared<Recorder>();
  mine.Add(heard);
  runtime::AddStepObserver(process);
  auto state = c10::make_intrusive<scheduler::LayerState>();
  const std::vector<bool> training = {true, true, false};
  for (size_t i = 0; i < training.size(); ++i) {
    scheduler::StepInputs in = InputsOf(m, torch::randn({24, 8}), training[i]);
    in.state = state;
    in.observers = &mine;
    const scheduler::StepResult r = scheduler::MoEForward(m->options, in);
    ASSERT_EQ(heard->seen.size(), i + 1) << "one notification per forward, eval included";
    const monitor::StepStats& s = heard->seen.back();
    EXPECT_EQ(s.layer.name, "observed");
    EXPECT_EQ(s.layer.num_experts, 4);
    EXPECT_EQ(s.layer.d_hidden, 16);
    EXPECT_EQ(s.step, std::min<int64_t>(i, 2));  // the eval forward runs as the step after two training ones
    EXPECT_EQ(s.training, training[i]);
    EXPECT_FALSE(s.recomputed);
    EXPECT_EQ(s.kept.world_size, 1);
    EXPECT_EQ(s.kept.counts, Values(r.counts));
    EXPECT_EQ(s.routed_here, Values(r.routed_counts));
    EXPECT_EQ(s.routed.counts, Values(r.routed_counts));
    EXPECT_EQ(s.dropped, 24 * 2 - s.kept.Total());
    EXPECT_GT(s.dropped, 0) << "capacity 0.5 drops";
    EXPECT_EQ(s.capacity, r.stats.capacity);
    EXPECT_EQ(s.balance_loss, r.balance_loss.item<double>());
    EXPECT_EQ(s.z_loss, r.z_loss.item<double>());
    EXPECT_TRUE(s.placed);
    ASSERT_TRUE(s.cost_model.has_value());
    EXPECT_FALSE(s.cost_model->calibrating);
    EXPECT_GT(s.cost_model->flops, 0);
    EXPECT_EQ(s.phase_seconds().size(), 7u) << "the forward phases, shadow_reduce (backward) excluded";
    EXPECT_GT(s.phase_seconds().at("experts"), 0);
    EXPECT_EQ(s.plan_hash(), r.stats.plan_hash());
  }
  EXPECT_TRUE(process->seen.empty()) << "a step with its own list does not tell the process's";
  // Without a list of its own, the layer tells the process's observers.
  m->forward(torch::randn({6, 8}));
  ASSERT_EQ(process->seen.size(), 1u);
  EXPECT_EQ(process->seen[0].layer.name, "observed");
  EXPECT_EQ(process->seen[0].kept.Total(), m->stats().counts.sum().item<int64_t>());
}

TEST(StepObservers, AnObserversErrorReachesTheCaller) {
  struct Failing : monitor::StepObserver {
    void OnStep(const monitor::StepStats& s) override {
      throw Error(absl::UnavailableError("the sink of " + s.layer.name + " is gone"));
    }
  };
  MoELayer m(MoEOptions(8, 16, 4).name("failing"));
  monitor::StepObservers list;
  list.Add(std::make_shared<Failing>());
  scheduler::StepInputs in = InputsOf(m, torch::randn({5, 8}), true);
  in.observers = &list;
  try {
    scheduler::MoEForward(m->options, in);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the sink of failing is gone"), std::string::npos) << e.what();
  }
}

monitor::StepStats HandMade() {
  monitor::StepStats s;
  s.layer = {"hand", 4, 8, 16, false, false, 4};
  s.rank = 3;
  s.step = 7;
  s.training = true;
  s.kept = ValueOrThrow(placement::CountMatrix::Make(2, 4, {1, 2, 3, 4, 10, 20, 30, 40}));
  s.routed = ValueOrThrow(placement::CountMatrix::Make(2, 4, {2, 2, 3, 4, 10, 20, 30, 41}));
  s.routed_here = {2, 2, 3, 4};
  s.dropped = 1;
  s.bytes_sent = 100, s.bytes_received = 200;
  s.plan = placement::Plan::None(2, 4);
  s.plan.copies[2] = {0};
  s.placed = true;
  for (int p = 0; p < monitor::kNumPhases; ++p) s.times.seconds[p] = 0.5 * (p + 1);
  return s;
}

TEST(StepObservers, TheMetricsReportIsDerivedFromTheStats) {
  monitor::StepStats s = HandMade();
  monitor::StepReport r = monitor::MetricsReportOf(s);
  EXPECT_EQ(r.layer, "hand");
  EXPECT_EQ(r.routed, s.routed_here);
  EXPECT_EQ(r.expert_loads, (std::vector<int64_t>{11, 22, 33, 44}));
  EXPECT_EQ(r.dropped, 1);
  EXPECT_EQ(r.copied_experts, 1);
  EXPECT_EQ(r.plan_hash, s.plan.Hash());
  EXPECT_EQ(r.bytes_sent, 100);
  EXPECT_EQ(r.bytes_received, 200);
  EXPECT_DOUBLE_EQ(r.step_seconds, 0.5 * monitor::kNumPhases * (monitor::kNumPhases + 1) / 2);
  EXPECT_TRUE(r.cost_model_rates.empty()) << "configured rates are not exported";
  EXPECT_EQ(r.cost_model_error, -1);
  s.cost_model = monitor::CostModelStats{true, 1e12, 2e9, 3e8, 1e-6, 2e-6, 1e-4, 0.125, 9};
  r = monitor::MetricsReportOf(s);
  ASSERT_EQ(r.cost_model_rates.size(), 6u);
  EXPECT_EQ(r.cost_model_rates[0], (std::pair<std::string, double>{"flops", 1e12}));
  EXPECT_EQ(r.cost_model_rates[5], (std::pair<std::string, double>{"fixed_seconds", 1e-4}));
  EXPECT_EQ(r.cost_model_error, 0.125);
}

TEST(StepObservers, TheTraceRecordIsDerivedFromTheStats) {
  monitor::StepStats s = HandMade();
  placement::TraceStep t = monitor::TraceRecordOf(s);
  EXPECT_EQ(t.step, 7);
  EXPECT_EQ(t.kept.counts, s.kept.counts);
  EXPECT_EQ(t.routed.counts, s.routed.counts);
  ASSERT_TRUE(t.plan.has_value());
  EXPECT_EQ(t.plan->Hash(), s.plan.Hash());
  EXPECT_EQ(t.phase_seconds, std::vector<double>(s.times.seconds.begin(), s.times.seconds.end()));
  s.placed = false;
  EXPECT_FALSE(monitor::TraceRecordOf(s).plan.has_value()) << "a stateless step records no plan";
}

}  // namespace
}  // namespace dynamoe
