// dynamoe::MoELayer against a naive per-token reference (plain loops).
#include <torch/nn/modules/linear.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <cmath>
#include <set>

#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "bindings/moe_layer.h"
#include "common/status.h"

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
  EXPECT_TRUE(torch::allclose(y, yr, 1e-4, 1e-5)) << (y - yr).abs().max();
  EXPECT_TRUE(torch::allclose(got_x, x.grad(), 1e-4, 1e-5));
  const std::vector<Tensor> want = grads();
  const auto named = m->named_parameters();
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_TRUE(torch::allclose(got[i], want[i], 1e-4, 1e-5)) << named[i].key();
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
  for (const char* phase : {"gate", "dispatch", "experts", "combine"}) EXPECT_GE(m->stats().phase_seconds.at(phase), 0.0);
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

struct LinearExpertImpl : torch::nn::Module {
  explicit LinearExpertImpl(int64_t d) : fc(register_module("fc", torch::nn::Linear(d, d))) {}
  Tensor forward(const Tensor& x) { return fc->forward(x); }
  torch::nn::Linear fc;
};
TORCH_MODULE(LinearExpert);

TEST(Layer, CustomExpertsAndBf16) {
  MoELayer m(MoEOptions(4, 8, 3).top_k(1),
             [](int64_t) { return torch::nn::AnyModule(LinearExpert(4)); });
  const Tensor x = torch::randn({7, 4}, torch::requires_grad());
  const Tensor y = m->forward(x);
  y.sum().backward();
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_TRUE(x.grad().defined());
  EXPECT_EQ(m->named_parameters().size(), 1u + 3 * 2);

  // The fp32 reference runs on bf16-representable weights and inputs, so both
  // layers compute the same fp32 logits and route identically (otherwise a
  // near-tie can flip an expert and the comparison is meaningless).
  MoELayer b(MoEOptions(8, 16, 4));
  b->to(torch::kBFloat16);
  b->to(torch::kFloat);
  const Tensor xf = torch::randn({12, 8}).to(torch::kBFloat16).to(torch::kFloat);
  const Tensor yf = b->forward(xf);
  b->to(torch::kBFloat16);
  const Tensor yb = b->forward(xf.to(torch::kBFloat16));
  EXPECT_EQ(yb.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::allclose(yb.to(torch::kFloat), yf, 5e-2, 5e-2));
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
