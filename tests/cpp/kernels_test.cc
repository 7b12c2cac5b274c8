// CPU kernels against plain loops and hand-computed fixtures.
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include <gtest/gtest.h>

#include "kernels/kernels.h"

namespace dynamoe::kernels {
namespace {

struct Routed {
  std::vector<int64_t> position, kept, routed;
  int64_t dropped = 0;
};

Routed Route(const std::vector<int64_t>& idx, int64_t T, int k, int64_t E, RoutingOptions o = {}) {
  Routed r{std::vector<int64_t>(T * k), std::vector<int64_t>(E), std::vector<int64_t>(E)};
  const auto s = ComputeRouting(idx.data(), T, k, E, o, r.position.data(), r.kept.data(), r.routed.data(), &r.dropped);
  EXPECT_TRUE(s.ok()) << s;
  return r;
}

TEST(Capacity, SignedFactor) {
  EXPECT_EQ(*ExpertCapacity(100, 2, 8, 0.0, 4), kUnlimitedCapacity);
  EXPECT_EQ(*ExpertCapacity(100, 2, 8, 1.0, 4), 25);
  EXPECT_EQ(*ExpertCapacity(100, 2, 8, 1.25, 4), 32);  // ceil(31.25)
  EXPECT_EQ(*ExpertCapacity(100, 2, 8, -1.25, 4), 32);
  EXPECT_EQ(*ExpertCapacity(8, 1, 8, 1.0, 4), 4);  // min_capacity
  EXPECT_EQ(*ExpertCapacity(0, 2, 8, 1.0, 0), 0);
}

// A factor whose bound overflows int64 is clamped to the token count (no
// expert can get more), never wrapped to min_capacity.
TEST(Capacity, HugeFactorClampsToTokens) {
  EXPECT_EQ(*ExpertCapacity(100, 2, 8, 1e20, 4), 100);
  EXPECT_EQ(*ExpertCapacity(100, 2, 8, -1e300, 4), 100);
  EXPECT_EQ(*ExpertCapacity(100, 2, 8, 3.0, 4), 75);   // below the clamp: unchanged
  EXPECT_EQ(*ExpertCapacity(3, 2, 8, 1e20, 4), 4);     // min_capacity still applies
  EXPECT_EQ(*ExpertCapacity(int64_t{1} << 62, 1, 1, 1e6, 4), int64_t{1} << 62);
}

TEST(Capacity, BadArgumentsAreNamed) {
  EXPECT_NE(ExpertCapacity(100, 2, 0, 1.0, 4).status().message().find("num_experts must be >= 1, got 0"),
            std::string::npos);
  EXPECT_NE(ExpertCapacity(-1, 2, 8, 1.0, 4).status().message().find("num_tokens must be >= 0"), std::string::npos);
  EXPECT_NE(ExpertCapacity(10, 9, 8, 1.0, 4).status().message().find("top_k must be in [1, num_experts=8]"),
            std::string::npos);
  EXPECT_NE(ExpertCapacity(10, 2, 8, NAN, 4).status().message().find("capacity_factor must be finite"),
            std::string::npos);
  EXPECT_NE(ExpertCapacity(10, 2, 8, INFINITY, 4).status().message().find("capacity_factor must be finite"),
            std::string::npos);
  EXPECT_NE(ExpertCapacity(10, 2, 8, 1.0, -1).status().message().find("min_capacity must be >= 0"),
            std::string::npos);
}

TEST(TopK, OrderTiesAndNaN) {
  const std::vector<float> key = {0.1f, 0.5f, 0.5f, 0.2f,  //
                                  NAN, 0.3f, -1.f, 0.3f};
  std::vector<int64_t> idx(4);
  ASSERT_TRUE(TopK<float>(key.data(), 2, 4, 2, idx.data(), 0, 2).ok());
  EXPECT_EQ(idx, (std::vector<int64_t>{1, 2, 5 - 4, 7 - 4}));
  EXPECT_FALSE(TopK<float>(key.data(), 2, 4, 5, idx.data(), 0, 2).ok());
}

TEST(Routing, DroplessKeepsAllSortedByExpertThenToken) {
  // 3 tokens, top-2 over 3 experts.
  const std::vector<int64_t> idx = {2, 0, 0, 1, 2, 1};
  Routed r = Route(idx, 3, 2, 3);
  EXPECT_EQ(r.dropped, 0);
  EXPECT_EQ(r.kept, (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(r.routed, r.kept);
  // expert 0: t0(j1)=row0, t1(j0)=row1; expert 1: t1=2, t2=3; expert 2: t0=4, t2=5
  EXPECT_EQ(r.position, (std::vector<int64_t>{4, 0, 1, 2, 5, 3}));
}

TEST(Routing, FirstChoicesClaimFirst) {
  // capacity 1: expert 0 is t1's first choice and t0's second choice.
  const std::vector<int64_t> idx = {1, 0, 0, 1};
  RoutingOptions o;
  o.capacity = 1;
  Routed r = Route(idx, 2, 2, 2, o);
  EXPECT_EQ(r.position, (std::vector<int64_t>{1, -1, 0, -1}));
  EXPECT_EQ(r.dropped, 2);
  EXPECT_EQ(r.kept, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(r.routed, (std::vector<int64_t>{2, 2}));
}

TEST(Routing, RtsKeepsHighestPriorityAndIsSeeded) {
  const int64_t T = 12;
  const std::vector<int64_t> idx(T, 0);
  RoutingOptions o;
  o.capacity = 4;
  o.use_rts = true;
  std::set<std::set<int64_t>> seen;
  for (uint64_t seed : {1u, 2u, 3u}) {
    o.rts_seed = seed;
    Routed r = Route(idx, T, 1, 2, o);
    std::vector<int64_t> order(T);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return RtsPriority(seed, 0, a, 0) > RtsPriority(seed, 0, b, 0); });
    std::set<int64_t> kept, want(order.begin(), order.begin() + 4);
    for (int64_t t = 0; t < T; ++t)
      if (r.position[t] >= 0) kept.insert(t);
    EXPECT_EQ(kept, want);
    EXPECT_EQ(Route(idx, T, 1, 2, o).position, r.position);  // deterministic
    seen.insert(kept);
  }
  EXPECT_GT(seen.size(), 1u);
}

TEST(Routing, BadInput) {
  std::vector<int64_t> pos(2), kept(2), routed(2);
  int64_t dropped;
  const std::vector<int64_t> bad = {0, 5};
  const auto s = ComputeRouting(bad.data(), 2, 1, 2, {}, pos.data(), kept.data(), routed.data(), &dropped);
  EXPECT_EQ(s.message(), "expert index out of range [0, 2): 5 at token 1 choice 0");
  std::vector<int64_t> assignment(2);
  const std::vector<int64_t> dup = {0, 0};
  EXPECT_FALSE(InvertPositions(dup.data(), 2, 2, assignment.data()).ok());
}

// The fused router twin, as the CPU layer calls it (float and double).
template <typename F>
struct FusedRouted {
  std::vector<F> scores, weight, score_sum;
  std::vector<int64_t> idx, position, kept, routed;
  int64_t dropped = -1, nonfinite = -1;
  absl::Status status;
};

template <typename F>
FusedRouted<F> RunFused(const std::vector<F>& logits, const F* bias, const RouterSpec& spec,
                        const RouterCpuInputs<F>& in = {}, bool optional_outputs = true) {
  const int64_t T = spec.num_tokens, E = spec.num_experts;
  FusedRouted<F> r{std::vector<F>(T * E), std::vector<F>(T * spec.top_k), std::vector<F>(E),
                   std::vector<int64_t>(T * spec.top_k), std::vector<int64_t>(T * spec.top_k),
                   std::vector<int64_t>(E), std::vector<int64_t>(E)};
  RouterOutputsOf<F> out{r.scores.data(), r.idx.data(), optional_outputs ? r.weight.data() : nullptr,
                         r.position.data(), r.kept.data(), r.routed.data(),
                         optional_outputs ? r.score_sum.data() : nullptr, &r.dropped, &r.nonfinite};
  r.status = FusedRouter<F>(logits.data(), bias, spec, out, in);
  return r;
}

template <typename F>
class FusedRouterCpu : public ::testing::Test {};
using RouterTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(FusedRouterCpu, RouterTypes);

// Softmax, selection by score + bias, renormalised weights, capacity drops:
// the pieces (TopK, ComputeRouting) by hand.
TYPED_TEST(FusedRouterCpu, MatchesItsPieces) {
  using F = TypeParam;
  const int64_t T = 5, E = 4;
  const int k = 2;
  std::mt19937 gen(3);
  std::normal_distribution<double> normal;
  std::vector<F> logits(T * E);
  for (F& v : logits) v = F(normal(gen));
  logits[2] = NAN;  // one non-finite row
  const std::vector<F> bias = {0, F(0.5), 0, F(-0.25)};
  RouterSpec spec{T, E, k, ScoreFunction::kSoftmax, true, 2};
  const FusedRouted<F> r = RunFused<F>(logits, bias.data(), spec);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.nonfinite, 1);
  std::vector<F> key(T * E);
  for (int64_t i = 0; i < T * E; ++i) key[i] = r.scores[i] + bias[i % E];
  std::vector<int64_t> idx(T * k);
  ASSERT_TRUE(TopK<F>(key.data(), T, E, k, idx.data(), 0, T).ok());
  EXPECT_EQ(r.idx, idx);
  for (int64_t t = 1; t < T; ++t) {  // row 0 holds the NaN
    F sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += r.scores[t * E + e];
    EXPECT_NEAR(sum, 1, 1e-6);
    const F a = r.scores[t * E + idx[t * k]], b = r.scores[t * E + idx[t * k + 1]];
    EXPECT_EQ(r.weight[t * k], a / (a + b));
  }
  RoutingOptions o;
  o.capacity = 2;
  const Routed want = Route(idx, T, k, E, o);
  EXPECT_EQ(r.position, want.position);
  EXPECT_EQ(r.kept, want.kept);
  EXPECT_EQ(r.routed, want.routed);
  EXPECT_EQ(r.dropped, want.dropped);
  EXPECT_GT(r.dropped, 0);
}

// The CPU layer's inputs: its own scores (not recomputed, not written), a
// noisy selection key, RTS, and no weight or score-sum outputs.
TYPED_TEST(FusedRouterCpu, GivenScoresKeyAndRts) {
  using F = TypeParam;
  const int64_t T = 12, E = 3;
  std::vector<F> logits(T * E, 0), scores(T * E), key(T * E);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) {
      scores[t * E + e] = e == 0 ? F(0.6) : F(0.2);  // selection by the scores: expert 0
      key[t * E + e] = e == 2 ? F(0.9) : F(0.05);    // by the key: expert 2
    }
  RouterSpec spec{T, E, 1, ScoreFunction::kSoftmax, true, 4};
  RouterCpuInputs<F> in;
  in.scores = scores.data();
  FusedRouted<F> r = RunFused<F>(logits, nullptr, spec, in, false);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.idx, std::vector<int64_t>(T, 0));
  EXPECT_EQ(r.scores, std::vector<F>(T * E, 0));  // given scores: nothing written
  EXPECT_EQ(r.weight, std::vector<F>(T, 0));
  EXPECT_EQ(r.score_sum, std::vector<F>(E, 0));
  EXPECT_EQ(r.nonfinite, 0);
  in.key_scores = key.data();
  in.use_rts = true;
  in.rts_seed = 7;
  in.step = 3;
  r = RunFused<F>(logits, nullptr, spec, in, false);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.idx, std::vector<int64_t>(T, 2));
  RoutingOptions o;
  o.capacity = 4, o.use_rts = true, o.rts_seed = 7, o.step = 3;
  const Routed want = Route(r.idx, T, 1, E, o);
  EXPECT_EQ(r.position, want.position);
  EXPECT_NE(r.position, Route(r.idx, T, 1, E, RoutingOptions{4}).position);  // not positional
  EXPECT_EQ(r.dropped, T - 4);
}

TEST(FusedRouterCpu, BadInputsAreNamed) {
  RouterSpec spec{2, 3, 4, ScoreFunction::kSoftmax, true, kUnlimitedCapacity};
  std::vector<float> logits(6, 0);
  EXPECT_NE(RunFused<float>(logits, nullptr, spec).status.message().find("top_k must be in [1, min(num_experts=3"),
            std::string::npos);
  spec.top_k = 1;
  std::vector<int64_t> idx(2), pos(2), kept(3), routed(3);
  int64_t dropped;
  RouterOutputsOf<float> out{nullptr, idx.data(), nullptr, pos.data(), kept.data(), routed.data(), nullptr, &dropped};
  EXPECT_EQ(FusedRouter<float>(logits.data(), nullptr, spec, out, {}).message(),
            "fused router: expected the logits and a scores output, or given scores");
}

TEST(Permute, GatherCombineAndBackwardsMatchLoops) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int64_t> pick(0, 4);
  std::normal_distribution<float> normal;
  const int64_t T = 37, E = 5, d = 7;
  const int k = 2;
  std::vector<int64_t> idx(T * k);
  for (int64_t t = 0; t < T; ++t) {
    idx[t * k] = pick(rng);
    idx[t * k + 1] = (idx[t * k] + 1 + pick(rng) % (E - 1)) % E;
  }
  RoutingOptions o;
  o.capacity = 12;
  Routed r = Route(idx, T, k, E, o);
  const int64_t N = T * k - r.dropped;
  std::vector<int64_t> assignment(N), token(N);
  ASSERT_TRUE(InvertPositions(r.position.data(), T * k, N, assignment.data()).ok());
  for (int64_t p = 0; p < N; ++p) token[p] = assignment[p] / k;

  std::vector<float> x(T * d), w(T * k), rows(N * d), out(T * d), g(T * d), grad_rows(N * d), grad_w(T * k);
  for (auto* v : {&x, &w, &g})
    for (auto& e : *v) e = normal(rng);
  GatherRows<float>(x.data(), token.data(), d, rows.data(), 0, N);
  CombineRows<float, float>(rows.data(), r.position.data(), w.data(), k, d, out.data(), 0, T);
  ScatterWeightedRows<float, float>(g.data(), assignment.data(), w.data(), k, d, grad_rows.data(), 0, N);
  CombineWeightGrad<float, float>(g.data(), rows.data(), r.position.data(), k, d, grad_w.data(), 0, T);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < d; ++c) {
      float want = 0;
      for (int j = 0; j < k; ++j)
        if (r.position[t * k + j] >= 0) want += w[t * k + j] * x[t * d + c];
      EXPECT_NEAR(out[t * d + c], want, 1e-5);
    }
    for (int j = 0; j < k; ++j) {
      const int64_t p = r.position[t * k + j];
      float want = 0;
      for (int64_t c = 0; c < d && p >= 0; ++c) want += g[t * d + c] * x[t * d + c];
      EXPECT_NEAR(grad_w[t * k + j], want, 1e-4);
      for (int64_t c = 0; c < d && p >= 0; ++c) EXPECT_FLOAT_EQ(grad_rows[p * d + c], w[t * k + j] * g[t * d + c]);
    }
  }
  // Splitting the rows over "threads" gives identical bits.
  std::vector<float> split(T * d);
  CombineRows<float, float>(rows.data(), r.position.data(), w.data(), k, d, split.data(), 0, 11);
  CombineRows<float, float>(rows.data(), r.position.data(), w.data(), k, d, split.data(), 11, T);
  EXPECT_EQ(split, out);
}

double Act(Activation act, double x) {
  double a;
  ActivationForward<double>(&x, nullptr, act, &a, 0, 1);
  return a;
}

// Hand values: gelu(x) = x Phi(x) (Phi(1) = 0.8413447460685429, Phi(-2) =
// 0.022750131948179...), silu(x) = x / (1 + e^-x). 1e-15: a few ulp of double.
TEST(Activation, CpuTwinMatchesHandValues) {
  EXPECT_NEAR(Act(Activation::kGelu, 1.0), 0.8413447460685429, 1e-15);
  EXPECT_NEAR(Act(Activation::kGelu, -2.0), -0.04550026389635844, 1e-15);
  EXPECT_NEAR(Act(Activation::kSilu, 1.0), 0.7310585786300049, 1e-15);
  EXPECT_NEAR(Act(Activation::kSilu, -2.0), -0.2384058440442351, 1e-15);
  EXPECT_EQ(Act(Activation::kRelu, -1.0), 0.0);
  EXPECT_EQ(Act(Activation::kRelu, 2.5), 2.5);
  float xf = 1.0f, af = 0;  // the float twin computes in float
  ActivationForward<float>(&xf, nullptr, Activation::kGelu, &af, 0, 1);
  EXPECT_NEAR(af, 0.8413447460685429, 4e-7);  // a few ulp of float at 0.84
}

// The backward pass (grad_h, grad_g, the recomputed activation) against
// central differences of the forward, plain and gated, in double. Step 1e-6:
// truncation error ~1e-13 (|f'''| / 6 eps^2), rounding ~1e-16 |f| / eps =
// 1e-10, so 1e-8. (Moved here from the CUDA test, where it never ran without
// a GPU.)
TEST(Activation, DerivativeMatchesCentralDifference) {
  const double eps = 1e-6, ga = 0.3, g = 1.7;
  for (Activation act : {Activation::kGelu, Activation::kSilu, Activation::kRelu})
    for (double x : {-3.0, -1.2785, -0.5, 0.37, 2.5}) {  // -1.2785: near the minimum of silu
      SCOPED_TRACE(testing::Message() << "act=" << static_cast<int>(act) << " x=" << x);
      const double fd = (Act(act, x + eps) - Act(act, x - eps)) / (2 * eps);
      double grad_h = 0, grad_g = 0, a = 0, unused = 0;
      ActivationBackward<double>(&ga, &x, nullptr, act, &grad_h, nullptr, &unused, 0, 1);
      EXPECT_NEAR(grad_h, ga * fd, 1e-8);
      // Gated: a = act(h) g, so grad_h = grad_a g act'(h) and grad_g = grad_a act(h).
      ActivationBackward<double>(&ga, &x, &g, act, &grad_h, &grad_g, &a, 0, 1);
      EXPECT_NEAR(grad_h, ga * g * fd, 1e-8);
      EXPECT_NEAR(grad_g, ga * Act(act, x), 1e-15);
      EXPECT_NEAR(a, g * Act(act, x), 1e-15);
      double forward_gated = 0;
      ActivationForward<double>(&x, &g, act, &forward_gated, 0, 1);
      EXPECT_EQ(forward_gated, a);  // one formula, forward and recomputed in backward
    }
}

TEST(Bf16, RoundTripAndRounding) {
  for (float f : {0.f, 1.f, -2.5f, 3.14159f, 1e-20f, 65504.f}) {
    const float back = ToFloat(FromFloat(f, static_cast<bf16*>(nullptr)));
    EXPECT_NEAR(back, f, std::fabs(f) / 128 + 1e-30) << f;
  }
  EXPECT_EQ(FromFloat(1.0f + 1.0f / 256, static_cast<bf16*>(nullptr)).bits, 0x3f80);  // tie to even
  EXPECT_TRUE(std::isnan(ToFloat(FromFloat(NAN, static_cast<bf16*>(nullptr)))));
}

}  // namespace
}  // namespace dynamoe::kernels
