// scheduler::Layer, the runtime built once that dynamoe::MoELayer and
// dynamoe.MoE hold: the caller-run expert path (Dispatch ... Finish, what
// Python's custom experts use) is the same step as the callback path, and
// misuse is named.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/status.h"
#include "scheduler/layer.h"
#include "tests/cpp/custom_expert_reference.h"

namespace dynamoe::scheduler {
namespace {

using testing::IndexedExpert;

std::vector<IndexedExpert> Experts(int64_t E, int64_t d) {
  std::vector<IndexedExpert> experts;
  for (int64_t e = 0; e < E; ++e) experts.push_back(IndexedExpert(e, d));
  return experts;
}

LayerTensors Tensors(const at::Tensor& gate) {
  LayerTensors t;
  t.gate_weight = gate;
  return t;
}

TEST(LayerRuntime, CallerRunExpertsAreTheCallbackStep) {
  const int64_t d = 6, E = 5;
  torch::manual_seed(3);
  const at::Tensor gate = torch::randn({E, d}, torch::kDouble).requires_grad_(true);
  const at::Tensor x = torch::randn({17, d}, torch::kDouble);
  const MoEOptions o = MoEOptions(d, 8, E).top_k(2).capacity_factor(1.0).name("runtime");
  auto by_callback = c10::make_intrusive<Layer>(o, nullptr, nullptr, /*custom_experts=*/true);
  auto by_caller = c10::make_intrusive<Layer>(o, nullptr, nullptr, /*custom_experts=*/true);
  std::vector<IndexedExpert> a = Experts(E, d), b = Experts(E, d);

  const at::Tensor xa = x.clone().requires_grad_(true), xb = x.clone().requires_grad_(true);
  const StepResult ra = by_callback->Forward(xa, Tensors(gate), /*training=*/true,
                                             [&](int64_t e, const at::Tensor& rows) { return a[e]->forward(rows); });
  c10::intrusive_ptr<PendingStep> pending = by_caller->Dispatch(xb, Tensors(gate), /*training=*/true);
  std::vector<at::Tensor> outputs;
  int64_t off = 0, calls = 0;
  const std::vector<int64_t> counts = pending->slot_counts();
  ASSERT_EQ(static_cast<int64_t>(counts.size()), E);
  for (int64_t k = 0; k < E; off += counts[k], ++k) {
    if (counts[k] == 0) continue;
    outputs.push_back(b[pending->first_expert() + k]->forward(pending->rows().narrow(0, off, counts[k])));
    ++calls;
  }
  ASSERT_GT(calls, 1);
  const StepResult rb = by_caller->Finish(*pending, outputs, {});

  EXPECT_TRUE(torch::equal(ra.y, rb.y));
  EXPECT_TRUE(torch::equal(ra.counts, rb.counts));
  EXPECT_EQ(ra.stats.dropped, rb.stats.dropped);
  EXPECT_GT(rb.stats.times[monitor::Phase::kExperts], 0.0);
  EXPECT_EQ(by_callback->state()->step(), 1);
  EXPECT_EQ(by_caller->state()->step(), 1);  // the training step's side effects, once
  // The gradient reaches x and the caller's modules through the C++ combine.
  const at::Tensor gy = torch::randn_like(ra.y);
  (ra.y * gy).sum().backward();
  (rb.y * gy).sum().backward();
  EXPECT_TRUE(torch::equal(xa.grad(), xb.grad()));
  for (int64_t e = 0; e < E; ++e)
    if (a[e]->w.grad().defined()) EXPECT_TRUE(torch::equal(a[e]->w.grad(), b[e]->w.grad())) << "expert " << e;
}

TEST(LayerRuntime, MisuseIsNamed) {
  const int64_t d = 4, E = 3;
  torch::manual_seed(4);
  const at::Tensor gate = torch::randn({E, d}).mul(0).index_fill(0, torch::tensor({1}), 1.0).contiguous();
  const at::Tensor x = torch::ones({5, d});  // every token to expert 1 (top_k 1)
  auto layer = c10::make_intrusive<Layer>(MoEOptions(d, 8, E).top_k(1).name("misuse"), nullptr, nullptr, true);
  auto pending = layer->Dispatch(x, Tensors(gate), false);
  EXPECT_EQ(pending->slot_counts(), (std::vector<int64_t>{0, 5, 0}));
  try {
    layer->Finish(*pending, {}, {});
    ADD_FAILURE() << "no outputs accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("misuse: expected 1 expert outputs"), std::string::npos) << e.what();
  }
  // The failed finish left the step pending: the right outputs finish it, once.
  EXPECT_EQ(layer->Finish(*pending, {torch::zeros({5, d})}, {}).y.sizes(), x.sizes());
  try {
    layer->Finish(*pending, {torch::zeros({5, d})}, {});
    ADD_FAILURE() << "a finished step finished again";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already finished"), std::string::npos) << e.what();
  }
  auto built_in = c10::make_intrusive<Layer>(MoEOptions(d, 8, E).name("builtin"));
  EXPECT_THROW(built_in->Dispatch(x, Tensors(gate), false), Error);
  EXPECT_THROW(Layer(MoEOptions(d, 8, E).top_k(4)), Error);  // validated at construction
  auto residual =
      c10::make_intrusive<Layer>(MoEOptions(d, 8, E).top_k(1).use_residual(true).name("res"), nullptr, nullptr, true);
  auto p = residual->Dispatch(x, Tensors(gate), /*training=*/true);
  try {
    residual->Finish(*p, {torch::zeros({5, d})}, {});
    ADD_FAILURE() << "a residual layer ran without its residual weights";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("res: residual_fc1.weight must have shape [8, 4]"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(residual->state()->step(), 0) << "a step that failed its checks counted itself";
}

// The Layer validates its options once; the step's raw MoEOptions entries
// still validate each call, with Validate()'s message.
TEST(LayerRuntime, OptionsValidatedOnceKeepTheirErrors) {
  const MoEOptions bad = MoEOptions(4, 8, 3).top_k(4).name("bad");
  ASSERT_FALSE(bad.Validate().ok());
  EXPECT_EQ(ValidatedOptions::Make(bad).status(), bad.Validate());
  ValidatedOptions ok = ValueOrThrow(ValidatedOptions::Make(MoEOptions(4, 8, 3)));
  ok.set_name("renamed");
  EXPECT_EQ(ok->name(), "renamed");
  StepInputs in;
  in.x = torch::ones({5, 4});
  in.gate_weight = torch::ones({3, 4});
  for (auto run : {+[](const MoEOptions& o, const StepInputs& i) { MoEForward(o, i); },
                   +[](const MoEOptions& o, const StepInputs& i) { BeginStep(o, i); }}) {
    try {
      run(bad, in);
      ADD_FAILURE() << "invalid options ran a step";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), "INVALID_ARGUMENT: bad: top_k must be in [1, num_experts=3], got 4");
    }
  }
}

// A layer's own schedule is parsed in one place, its errors naming the layer.
TEST(LayerRuntime, ScheduleOptionsNameTheLayer) {
  EXPECT_EQ(ScheduleOptions::Make("sched", "", -5, std::nullopt).status().message(),
            "sched: group_size must be >= 1, got -5");
  EXPECT_EQ(ScheduleOptions::Make("sched", "", std::nullopt, 65).status().message(),
            "sched: overlap_degree must be in [0, 64] (0: from the cost model), got 65");
  EXPECT_EQ(ScheduleOptions::Make("sched", "fast", std::nullopt, std::nullopt).status().message(),
            "sched: schedule: unknown schedule \"fast\"; expected one of sequential, overlap");
  const ScheduleOptions s = ValueOrThrow(ScheduleOptions::Make("sched", "overlap", 2, 0));
  EXPECT_EQ(s.Describe(), "overlap(group_size=2, overlap_degree=auto)");
  Layer layer(MoEOptions(4, 8, 2).name("sched"));
  try {
    layer.set_schedule("fast", std::nullopt, std::nullopt);
    ADD_FAILURE() << "an unknown schedule was set";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sched: schedule: unknown schedule \"fast\""), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(layer.has_own_schedule());
}

}  // namespace
}  // namespace dynamoe::scheduler
