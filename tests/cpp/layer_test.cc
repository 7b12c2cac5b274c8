// dynamoe::MoELayer against a naive per-token reference (plain loops).
#include <torch/nn/modules/linear.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <cmath>
#include <set>

#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "bindings/moe_layer.h"
#include "common/status.h"
#include "config/step_observers.h"
#include "tests/cpp/custom_expert_reference.h"
#include "tests/cpp/ulps.h"

namespace dynamoe {
namespace {

using torch::Tensor;

// y[t] = sum over kept choices j of w[t,j] * FFN_{e_tj}(x[t]); positional drops.
Tensor Reference(const MoELayerImpl& m, const Tensor& x, std::vector<int64_t>* kept_counts) {
  const auto& o = m.options;
  const int64_t T = x.size(0), E = o.num_experts(), k = o.top_k();
  const Tensor scores = torch::softmax(torch::mm(x.to(torch::kFloat), m.gate->weight.t().to(torch::kFloat)), -1);
  std::vector<std::vector<int64_t>> choice(T);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int64_t> order(E);
    for (int64_t e = 0; e < E; ++e) order[e] = e;
    auto s = scores[t];
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return s[a].item<float>() > s[b].item<float>(); });
    choice[t].assign(order.begin(), order.begin() + k);
  }
  const double cf = o.capacity_factor();
  const int64_t cap = cf == 0 ? INT64_MAX
                              : std::max<int64_t>(o.min_capacity(), static_cast<int64_t>(std::ceil(k * T / double(E) * std::fabs(cf))));
  std::set<std::pair<int64_t, int64_t>> kept;  // (t, j)
  std::vector<int64_t> used(E, 0);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t t = 0; t < T; ++t)
      if (used[choice[t][j]] < cap) ++used[choice[t][j]], kept.insert({t, j});
  *kept_counts = used;
  std::vector<Tensor> rows;
  for (int64_t t = 0; t < T; ++t) {
    Tensor w = torch::stack({scores[t].index_select(0, torch::tensor(choice[t]))}).squeeze(0);
    if (o.normalize()) w = w / w.sum();
    Tensor acc = torch::zeros({o.d_model()});
    for (int64_t j = 0; j < k; ++j) {
      if (!kept.count({t, j})) continue;
      const int64_t e = choice[t][j];
      Tensor h = torch::matmul(x[t], m.w1[e]);
      if (m.b1.defined()) h = h + m.b1[e];
      Tensor a = o.activation() == "relu" ? torch::relu(h) : o.activation() == "silu" ? torch::silu(h) : torch::gelu(h);
      if (m.w3.defined()) a = a * torch::matmul(x[t], m.w3[e]);
      Tensor y = torch::matmul(a, m.w2[e]);
      if (m.b2.defined()) y = y + m.b2[e];
      acc = acc + w[j] * y;
    }
    rows.push_back(acc);
  }
  return rows.empty() ? x * 0 : torch::stack(rows);
}

struct Case {
  int64_t tokens, experts, top_k;
  double capacity_factor;
  bool gated, bias;
  const char* activation;
};

class LayerVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(LayerVsReference, OutputAndEveryGradient) {
  const Case c = GetParam();
  torch::manual_seed(c.tokens * 31 + c.experts);
  MoELayer m(MoEOptions(6, 10, c.experts).top_k(c.top_k).capacity_factor(c.capacity_factor).min_capacity(1)
                 .gated(c.gated).bias(c.bias).activation(c.activation));
  const Tensor x = torch::randn({c.tokens, 6}, torch::requires_grad());
  const Tensor y = m->forward(x);
  const Tensor gy = torch::randn_like(y);
  (y * gy).sum().backward();
  auto grads = [&]() {
    std::vector<Tensor> g;
    for (const auto& p : m->parameters()) g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    return g;
  };
  const std::vector<Tensor> got = grads();
  const Tensor got_x = x.grad().clone();
  m->zero_grad();
  x.mutable_grad().reset();

  std::vector<int64_t> kept;
  const Tensor yr = Reference(*m, x, &kept);
  (yr * gy).sum().backward();
  // fp32: the layer multiplies batched rows, the reference one token at a time,
  // so only the reduction order differs; sums of <= 20 tokens x 10 hidden terms
  // measured <= kLoopUlps ulps of the reference's largest value.
  constexpr double kLoopUlps = 8;
  EXPECT_EQ(testing::WithinUlps(y, yr, kLoopUlps, "output"), "");
  EXPECT_EQ(testing::WithinUlps(got_x, x.grad(), kLoopUlps, "input gradient"), "");
  const std::vector<Tensor> want = grads();
  const auto named = m->named_parameters();
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_EQ(testing::WithinUlps(got[i], want[i], kLoopUlps, named[i].key()), "") << named[i].key();
  const Tensor counts = m->stats().counts;
  EXPECT_EQ(counts.sizes(), (std::vector<int64_t>{1, c.experts}));
  EXPECT_EQ(std::vector<int64_t>(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + c.experts), kept);
}

INSTANTIATE_TEST_SUITE_P(Grid, LayerVsReference,
                         ::testing::Values(Case{9, 4, 2, 0.0, false, false, "gelu"}, Case{9, 4, 2, 0.5, false, false, "gelu"},
                                           Case{16, 4, 1, 1.0, true, true, "silu"}, Case{13, 6, 4, -0.5, false, true, "relu"},
                                           Case{5, 1, 1, 0.0, true, false, "gelu"}, Case{0, 3, 2, 1.0, false, false, "gelu"},
                                           Case{20, 8, 8, 0.0, true, true, "gelu"}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           const Case& c = info.param;
                           return "T" + std::to_string(c.tokens) + "_E" + std::to_string(c.experts) + "_k" +
                                  std::to_string(c.top_k) + "_case" + std::to_string(info.index);
                         });

TEST(Layer, ParameterNamesMatchPython) {
  MoELayer m(MoEOptions(4, 8, 2).gated(true).bias(true).use_residual(true));
  std::vector<std::string> names;
  for (const auto& p : m->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"w1", "w2", "w3", "b1", "b2", "gate.weight", "residual_fc1.weight",
                                             "residual_fc1.bias", "residual_fc2.weight", "residual_fc2.bias",
                                             "residual_coef.weight", "residual_coef.bias"}));
  EXPECT_EQ(m->named_buffers().size(), 1u);
  EXPECT_EQ(m->named_buffers()[0].key(), "expert_bias");
}

TEST(Layer, ShapesStatsAndAuxLoss) {
  MoELayer m(MoEOptions(4, 8, 3).top_k(2));
  const Tensor x = torch::randn({2, 5, 4});
  const Tensor y = m->forward(x);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_EQ(m->stats().counts.sum().item<int64_t>(), 20);
  EXPECT_EQ(m->stats().dropped, 0);
  EXPECT_EQ(m->stats().capacity, -1);
  EXPECT_TRUE(m->aux_loss.requires_grad());
}

// One process, sequential: the timed phases are disjoint parts of the
// forward, so they add up to at most its wall time; the phases that worked
// took time, and those with nothing to do (no peers, no copies) none.
TEST(Layer, PhaseSecondsAddUpToTheForward) {
  MoELayer m(MoEOptions(16, 64, 4).top_k(2));
  const Tensor x = torch::randn({256, 16});
  m->forward(x);  // warm-up
  const auto t0 = std::chrono::steady_clock::now();
  m->forward(x);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto phases = m->stats().phase_seconds();
  EXPECT_EQ(phases.size(), 7u);
  double sum = 0;
  for (const auto& [name, seconds] : phases) sum += seconds;
  EXPECT_LE(sum, wall) << "phases overlap or were counted twice";
  for (const char* worked : {"gate", "dispatch", "experts"}) EXPECT_GT(phases.at(worked), 0.0) << worked;
  for (const char* idle : {"count_allgather", "shadow_broadcast"}) EXPECT_EQ(phases.at(idle), 0.0) << idle;
}

TEST(Layer, BadInputAndOptions) {
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message([] { MoELayer(MoEOptions(4, 8, 2).top_k(3)); }),
            "INVALID_ARGUMENT: moe: top_k must be in [1, num_experts=2], got 3");
  EXPECT_EQ(message([] { MoELayer(MoEOptions(0, 8, 2)); }), "INVALID_ARGUMENT: moe: d_model must be > 0, got 0");
  MoELayer m(MoEOptions(4, 8, 2).name("l0"));
  EXPECT_EQ(message([&] { m->forward(torch::randn({3, 5})); }),
            "INVALID_ARGUMENT: l0: x must have shape [..., d_model=4], got [3, 5]");
  EXPECT_EQ(message([&] { m->forward(torch::ones({3, 4}, torch::kInt)); }),
            "INVALID_ARGUMENT: l0: x must be float32, float64 or bfloat16, got Int");
  Tensor bad = torch::randn({4, 4});
  bad[1][0] = std::nan("");
  EXPECT_NE(message([&] { m->forward(bad); }).find("l0: 1 of 4 rows of router logits are not finite"), std::string::npos);
}

// Custom experts (ExpertFactory) against the plain per-token loop over the
// same modules (custom_expert_reference.h): output, input and gate gradients,
// each expert's gradients. Expert e's weights depend on e alone, so a layer
// that called another expert for e's rows would fail.
TEST(Layer, CustomExpertsMatchThePlainLoop) {
  using testing::IndexedExpert;
  const int64_t d = 6;
  for (const auto& [E, k] : {std::pair<int64_t, int64_t>{5, 2}, {4, 1}}) {
    torch::manual_seed(21 + E);
    MoELayer m(MoEOptions(d, 8, E).top_k(k), [&](int64_t e) { return torch::nn::AnyModule(IndexedExpert(e, d)); });
    m->to(torch::kDouble);
    EXPECT_EQ(m->named_parameters().size(), 1u + 2 * E);
    std::vector<IndexedExpert> plain;
    for (int64_t e = 0; e < E; ++e) plain.push_back(IndexedExpert(e, d));
    const Tensor gate = m->gate->weight.detach().clone().requires_grad_(true);
    const Tensor x = torch::randn({23, d}, torch::kDouble), gy = torch::randn({23, d}, torch::kDouble);
    const Tensor xm = x.clone().requires_grad_(true), xr = x.clone().requires_grad_(true);
    const Tensor y = m->forward(xm);
    (y * gy).sum().backward();
    const Tensor y_ref = testing::PlainCustomMoE(xr, gate, k, plain);
    (y_ref * gy).sum().backward();
    // fp64; the plain loop sums each token's k terms, and the gradients over
    // tokens, in another order than the layer's batched rows: measured up to
    // 3 ulps of the largest value, bound 4 (another expert's numbers are off
    // by O(1)).
    const double kReordered = 4;
    const std::string at = "E=" + std::to_string(E) + " k=" + std::to_string(k) + ": ";
    EXPECT_EQ(testing::WithinUlps(y, y_ref, kReordered, at + "output"), "") << at << "output";
    EXPECT_EQ(testing::WithinUlps(xm.grad(), xr.grad(), kReordered, at + "input gradient"), "") << at;
    EXPECT_EQ(testing::WithinUlps(m->gate->weight.grad(), gate.grad(), kReordered, at + "gate gradient"), "") << at;
    for (int64_t e = 0; e < E; ++e) {
      const auto mine = m->experts[e]->named_parameters(), want = plain[e]->named_parameters();
      for (const char* name : {"w", "b"}) {
        const std::string what = at + "expert " + std::to_string(e) + " gradient of " + name;
        ASSERT_TRUE(mine[name].grad().defined() && want[name].grad().defined()) << what;
        EXPECT_EQ(testing::WithinUlps(mine[name].grad(), want[name].grad(), kReordered, what), "") << what;
      }
    }
  }
}

// bf16 against fp32 on bf16-representable weights and inputs, so both
// compute the same fp32 logits and route identically (otherwise a near-tie
// can flip an expert and the comparison is meaningless). The bf16 layer
// rounds each product's result, the hidden activations and the combine to
// bf16: measured 2.33 bf16 ulps of the output's largest magnitude, bound 3.
TEST(Layer, Bf16CloseToFp32) {
  torch::manual_seed(5);
  MoELayer b(MoEOptions(8, 16, 4));
  b->to(torch::kBFloat16);
  b->to(torch::kFloat);
  const Tensor xf = torch::randn({12, 8}).to(torch::kBFloat16).to(torch::kFloat);
  const Tensor yf = b->forward(xf);
  b->to(torch::kBFloat16);
  const Tensor yb = b->forward(xf.to(torch::kBFloat16));
  EXPECT_EQ(yb.scalar_type(), torch::kBFloat16);
  const double gap = (yb.to(torch::kDouble) - yf.to(torch::kDouble)).abs().max().item<double>();
  const double ulp = testing::UlpAt(torch::kBFloat16, yf.abs().max().item<double>());
  if (const char* log = std::getenv("DYNAMOE_TEST_ULPS_LOG"))
    std::ofstream(log, std::ios::app) << gap / ulp << " bf16 ulps: layer bf16 vs fp32\n";
  EXPECT_LE(gap, 3 * ulp) << gap / ulp << " bf16 ulps";
}

// A hand-written reentrant checkpoint, as a LibTorch user would write one:
// forward without a graph, backward restores the CPU generator and runs the
// layer again.
struct Recompute : torch::autograd::Function<Recompute> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, Tensor x, MoELayer m) {
    ctx->saved_data["rng"] = at::detail::getDefaultCPUGenerator().get_state();
    ctx->save_for_backward({x});
    layer_of_ctx() = m;
    torch::NoGradGuard no_grad;
    return m->forward(x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    const Tensor saved_state = gen.get_state();
    gen.set_state(ctx->saved_data["rng"].toTensor());
    const Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    {
      torch::AutoGradMode grad_mode(true);
      torch::autograd::backward({layer_of_ctx()->forward(x)}, {grad[0]});
    }
    gen.set_state(saved_state);
    return {x.grad(), Tensor()};
  }
  static MoELayer& layer_of_ctx() {
    static MoELayer m{nullptr};
    return m;
  }
};

// The recomputation routes with the forward's step and bias (RTS and the
// bias update on, tight capacity) and the step counts once.
TEST(Layer, RecomputationRoutesAsTheForward) {
  torch::manual_seed(3);
  auto options = MoEOptions(8, 12, 4).top_k(2).capacity_factor(0.75).min_capacity(1).use_rts(true)
                     .bias_update_rate(0.1).name("ckpt");
  MoELayer plain(options), ckpt(options);
  // Observers hear of forwards, never of their recomputations.
  struct Counter : monitor::StepObserver {
    int forwards = 0, recomputations = 0;
    void OnStep(const monitor::StepStats& s) override { ++(s.recomputed ? recomputations : forwards); }
  };
  auto counter = std::make_shared<Counter>();
  runtime::AddStepObserver(counter);
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < plain->parameters().size(); ++i) ckpt->parameters()[i].copy_(plain->parameters()[i]);
  }
  for (int step = 0; step < 3; ++step) {
    const Tensor x = torch::randn({30, 8});
    const Tensor xa = x.clone().requires_grad_(true), xb = x.clone().requires_grad_(true);
    plain->zero_grad(), ckpt->zero_grad();
    torch::manual_seed(10 + step);
    const Tensor ya = plain->forward(xa);
    ya.square().sum().backward();
    torch::manual_seed(10 + step);
    const Tensor yb = Recompute::apply(xb, ckpt);
    yb.square().sum().backward();
    EXPECT_TRUE(torch::equal(ya, yb)) << "step " << step;
    EXPECT_TRUE(torch::equal(xa.grad(), xb.grad())) << "step " << step;
    for (size_t i = 0; i < plain->parameters().size(); ++i)
      EXPECT_TRUE(torch::equal(plain->parameters()[i].grad(), ckpt->parameters()[i].grad())) << "step " << step;
    EXPECT_TRUE(torch::equal(plain->expert_bias, ckpt->expert_bias)) << "step " << step;
    EXPECT_EQ(ckpt->step(), step + 1);
    EXPECT_EQ(plain->step(), step + 1);
  }
  EXPECT_FALSE(torch::equal(plain->expert_bias, torch::zeros({4}))) << "the bias moved";
  EXPECT_EQ(counter->forwards, 6) << "3 steps of 2 layers";
  EXPECT_EQ(counter->recomputations, 0);
}

// Unnamed layers get distinct names (metrics and traces key on them).
// router_bias: gate.bias is a parameter, added to the logits, and trained.
TEST(Layer, RouterBiasShiftsTheLogitsAndGetsAGradient) {
  MoELayer layer(MoEOptions(4, 8, 4).top_k(1).router_bias(true));
  auto params = layer->named_parameters();
  ASSERT_TRUE(params.contains("gate.bias"));
  torch::NoGradGuard guard;
  layer->gate->bias.zero_();
  layer->gate->bias[2] = 100.0;  // every token's first choice becomes expert 2
  torch::GradMode::set_enabled(true);
  const torch::Tensor x = torch::randn({10, 4});
  const torch::Tensor y = layer->forward(x);
  EXPECT_EQ(layer->stats().routed_counts[2].item<int64_t>(), 10);
  (y.sum() + layer->aux_loss).backward();
  ASSERT_TRUE(layer->gate->bias.grad().defined());
  EXPECT_GT(layer->gate->bias.grad().abs().sum().item<double>(), 0);
}

TEST(Layer, DefaultNamesAreUnique) {
  MoELayer a(MoEOptions(4, 8, 4)), b(MoEOptions(4, 8, 8));
  EXPECT_NE(a->options.name(), b->options.name());
  EXPECT_EQ(a->options.name().rfind("moe", 0), 0u);
}

}  // namespace
}  // namespace dynamoe
