// CUDA kernels against their CPU twins on random inputs and edge cases;
// skipped (with a message) where no GPU is present.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/kernels_cuda.h"
#include "kernels/kernels.h"

namespace dynamoe::kernels {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (!cuda::DeviceAvailable()) GTEST_SKIP() << "no CUDA device: the CUDA kernels are compiled but not run here"

// A device copy of a host vector, poisoned (0xff bytes) when made from a size.
template <typename T>
class Dev {
 public:
  explicit Dev(const std::vector<T>& v) : n_(v.size()) {
    EXPECT_EQ(cudaMalloc(&p_, sizeof(T) * std::max<size_t>(1, n_)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p_, v.data(), sizeof(T) * n_, cudaMemcpyHostToDevice), cudaSuccess);
  }
  explicit Dev(size_t n) : n_(n) {
    EXPECT_EQ(cudaMalloc(&p_, sizeof(T) * std::max<size_t>(1, n_)), cudaSuccess);
    EXPECT_EQ(cudaMemset(p_, 0xff, sizeof(T) * std::max<size_t>(1, n_)), cudaSuccess);
  }
  ~Dev() { cudaFree(p_); }
  Dev(const Dev&) = delete;
  T* get() const { return p_; }
  std::vector<T> Host() const {
    std::vector<T> v(n_);
    EXPECT_EQ(cudaMemcpy(v.data(), p_, sizeof(T) * n_, cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

template <typename T>
std::vector<T> Random(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = Store<T>(normal(rng));
  return v;
}

// One ulp of x is at most Spacing<T>() * |x| (x normal): 2^-(stored significand bits).
template <typename T> double Spacing();
template <> double Spacing<float>() { return 0x1p-23; }
template <> double Spacing<double>() { return 0x1p-52; }
template <> double Spacing<bf16>() { return 0x1p-7; }
template <> double Spacing<f16>() { return 0x1p-10; }
// The spacing of the subnormals (bf16 keeps float's exponent range).
template <typename T> double Subnormal();
template <> double Subnormal<float>() { return 0x1p-149; }
template <> double Subnormal<double>() { return 0x1p-1074; }
template <> double Subnormal<bf16>() { return 0x1p-133; }
template <> double Subnormal<f16>() { return 0x1p-24; }
// Unit roundoff of the accumulator the kernels compute in (float, or double for double).
template <typename T>
double RoundOff() { return Spacing<typename Acc<T>::type>() / 2; }

template <typename T>
std::vector<double> Wide(const std::vector<T>& v) {
  std::vector<double> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = ToFloat(v[i]);
  return o;
}

// Element-wise: |got_i - want_i| <= rel |want_i| + abs scale_i + floor, where
// scale_i is the magnitude the rounding error grows with (the sum of the
// terms' magnitudes; 1 when `scale` is empty). Bound{} asks for equality.
struct Bound {
  double rel = 0, abs = 0, floor = 0;
};

// extra_i (when given) is added to element i's allowance.
void ExpectClose(const std::vector<double>& got, const std::vector<double>& want, Bound b, const std::string& what,
                 const std::vector<double>& scale = {}, const std::vector<double>& extra = {}) {
  ASSERT_EQ(got.size(), want.size()) << what;
  ASSERT_TRUE(scale.empty() || scale.size() == want.size()) << what;
  ASSERT_TRUE(extra.empty() || extra.size() == want.size()) << what;
  size_t bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << what << ": NaN (unwritten?) at " << i;
    const double allowed = b.rel * std::fabs(want[i]) + b.abs * (scale.empty() ? 1.0 : scale[i]) + b.floor +
                           (extra.empty() ? 0.0 : extra[i]);
    if (std::fabs(got[i] - want[i]) <= allowed) continue;
    if (++bad <= 5)
      first << "\n  at " << i << ": got " << got[i] << " want " << want[i] << " (diff " << std::fabs(got[i] - want[i])
            << ", allowed " << allowed << ")";
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements outside the bound" << first.str();
}

struct RouterCase {
  int64_t T, E;
  int k;
  ScoreFunction score;
  bool normalize;
  int64_t capacity;
  bool bias;
  bool one_hot;  // every token prefers expert 0 (one expert takes all)
};

TEST(CudaKernels, FusedRouterMatchesCpuTwin) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(7);
  const RouterCase cases[] = {
      {1000, 8, 2, ScoreFunction::kSoftmax, true, kUnlimitedCapacity, false, false},
      {777, 64, 8, ScoreFunction::kSoftmax, true, kUnlimitedCapacity, true, false},
      {513, 7, 2, ScoreFunction::kSoftmax, false, 100, false, false},
      {600, 33, 4, ScoreFunction::kSigmoid, true, 50, true, false},
      {300, 5, 5, ScoreFunction::kSoftmax, true, kUnlimitedCapacity, false, false},  // k = experts
      {300, 5, 5, ScoreFunction::kSoftmax, true, 37, false, false},
      {2000, 16, 2, ScoreFunction::kSoftmax, true, 10, false, true},                 // one expert takes all
      {2000, 16, 2, ScoreFunction::kSoftmax, true, kUnlimitedCapacity, false, true},
      {0, 8, 2, ScoreFunction::kSoftmax, true, kUnlimitedCapacity, false, false},    // zero tokens
      {1, 1, 1, ScoreFunction::kSoftmax, true, 0, false, false},                     // capacity 0
      {3000, 130, 6, ScoreFunction::kSoftmax, true, kUnlimitedCapacity, false, false},
  };
  for (const RouterCase& c : cases) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " E=" << c.E << " k=" << c.k << " cap=" << c.capacity);
    std::vector<float> logits = Random<float>(c.T * c.E, rng, 2.0f), bias = Random<float>(c.E, rng, 0.1f);
    if (c.one_hot)
      for (int64_t t = 0; t < c.T; ++t) logits[t * c.E] += 50.0f;
    RouterSpec spec{c.T, c.E, c.k, c.score, c.normalize, c.capacity};
    const size_t TE = c.T * c.E, TK = c.T * c.k;
    std::vector<float> scores(TE), weight(TK), score_sum(c.E);
    std::vector<int64_t> idx(TK), pos(TK), kept(c.E), routed(c.E), dropped(1);
    ASSERT_TRUE(FusedRouter(logits.data(), c.bias ? bias.data() : nullptr, spec,
                            {scores.data(), idx.data(), weight.data(), pos.data(), kept.data(), routed.data(),
                             score_sum.data(), dropped.data()})
                    .ok());
    Dev<float> d_logits(logits), d_bias(bias), d_scores(TE), d_weight(TK), d_sum(c.E);
    Dev<int64_t> d_idx(TK), d_pos(TK), d_kept(c.E), d_routed(c.E), d_dropped(1);
    Dev<char> ws(cuda::RouterWorkspaceBytes(spec));
    RouterOutputs out{d_scores.get(), d_idx.get(), d_weight.get(), d_pos.get(), d_kept.get(), d_routed.get(),
                      d_sum.get(), d_dropped.get()};
    const absl::Status st = cuda::FusedRouter(d_logits.get(), c.bias ? d_bias.get() : nullptr, spec, out, ws.get(),
                                              cuda::RouterWorkspaceBytes(spec), nullptr);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(d_idx.Host(), idx);
    EXPECT_EQ(d_pos.Host(), pos);
    EXPECT_EQ(d_kept.Host(), kept);
    EXPECT_EQ(d_routed.Host(), routed);
    EXPECT_EQ(d_dropped.Host(), dropped);
    // Scores: expf within 2 ulp on the GPU (1 on the host), the row's E
    // exponentials summed in another order (warp tree vs loop; positive terms,
    // so within E ulp relative), one division: (E + 8) ulp relative.
    const double score_ulps = static_cast<double>(c.E + 8);
    ExpectClose(Wide(d_scores.Host()), Wide(scores), {score_ulps * Spacing<float>(), 0, Subnormal<float>()}, "scores");
    // Weights: a score, divided by the sum of the k chosen (k more ulp).
    ExpectClose(Wide(d_weight.Host()), Wide(weight), {(score_ulps + c.k) * Spacing<float>(), 0, Subnormal<float>()},
                "weight");
    // Column sums of T positive scores in another order (block tree vs loop): T ulp more.
    ExpectClose(Wide(d_sum.Host()), Wide(score_sum),
                {(score_ulps + static_cast<double>(c.T)) * Spacing<float>(), 0, Subnormal<float>()}, "score_sum");
    // Run to run identical (no atomics on floats).
    const std::vector<float> first_sum = d_sum.Host(), first_weight = d_weight.Host();
    ASSERT_TRUE(cuda::FusedRouter(d_logits.get(), c.bias ? d_bias.get() : nullptr, spec, out, ws.get(),
                                  cuda::RouterWorkspaceBytes(spec), nullptr)
                    .ok());
    EXPECT_EQ(d_sum.Host(), first_sum);
    EXPECT_EQ(d_weight.Host(), first_weight);
  }
}

TEST(CudaKernels, FusedRouterCountsNonFiniteRows) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(9);
  const int64_t T = 100, E = 6;
  std::vector<float> logits = Random<float>(T * E, rng);
  logits[7 * E + 2] = NAN, logits[40 * E] = INFINITY, logits[40 * E + 5] = -INFINITY, logits[99 * E + 1] = NAN;
  RouterSpec spec{T, E, 2, ScoreFunction::kSoftmax, true, kUnlimitedCapacity};
  std::vector<float> scores(T * E), weight(T * 2), sum(E);
  std::vector<int64_t> idx(T * 2), pos(T * 2), kept(E), routed(E), dropped(1), bad(1, -1);
  ASSERT_TRUE(FusedRouter(logits.data(), nullptr, spec,
                          {scores.data(), idx.data(), weight.data(), pos.data(), kept.data(), routed.data(),
                           sum.data(), dropped.data(), bad.data()})
                  .ok());
  EXPECT_EQ(bad[0], 3);
  Dev<float> d_logits(logits), d_scores(T * E), d_weight(T * 2), d_sum(E);
  Dev<int64_t> d_idx(T * 2), d_pos(T * 2), d_kept(E), d_routed(E), d_dropped(1), d_bad(1);
  Dev<char> ws(cuda::RouterWorkspaceBytes(spec));
  RouterOutputs out{d_scores.get(), d_idx.get(), d_weight.get(), d_pos.get(), d_kept.get(),
                    d_routed.get(), d_sum.get(), d_dropped.get(), d_bad.get()};
  ASSERT_TRUE(
      cuda::FusedRouter(d_logits.get(), nullptr, spec, out, ws.get(), cuda::RouterWorkspaceBytes(spec), nullptr).ok());
  EXPECT_EQ(d_bad.Host(), bad);
  EXPECT_EQ(d_kept.Host(), kept);  // rows with NaN still route (NaN ranks last on both)
}

TEST(CudaKernels, FusedRouterRejectsBadSpec) {
  SKIP_WITHOUT_GPU();
  RouterSpec spec{10, 4, 5, ScoreFunction::kSoftmax, true, kUnlimitedCapacity};
  const absl::Status st = cuda::FusedRouter(nullptr, nullptr, spec, {}, nullptr, 0, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("top_k"), std::string::npos) << st;
}

template <typename T>
void CheckPermute(int64_t T_, int64_t E, int k, int64_t d, std::mt19937& rng) {
  SCOPED_TRACE(testing::Message() << "T=" << T_ << " k=" << k << " d=" << d << " bytes=" << sizeof(T));
  std::vector<int64_t> idx(T_ * k);
  for (int64_t t = 0; t < T_; ++t) {  // k distinct experts per token
    const int64_t first = rng() % E;
    for (int j = 0; j < k; ++j) idx[t * k + j] = (first + j) % E;
  }
  std::vector<int64_t> pos(T_ * k), kept(E), routed(E);
  int64_t dropped = 0;
  RoutingOptions o;
  o.capacity = std::max<int64_t>(1, T_ * k / E);  // some drops
  ASSERT_TRUE(ComputeRouting(idx.data(), T_, k, E, o, pos.data(), kept.data(), routed.data(), &dropped).ok());
  const int64_t N = T_ * k - dropped;
  std::vector<int64_t> assignment(N), token(N);
  ASSERT_TRUE(InvertPositions(pos.data(), T_ * k, N, assignment.data()).ok());
  for (int64_t p = 0; p < N; ++p) token[p] = assignment[p] / k;
  using W = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  const std::vector<T> x = Random<T>(T_ * d, rng), g = Random<T>(T_ * d, rng);
  const std::vector<W> w = Random<W>(T_ * k, rng);
  std::vector<T> rows(N * d), out(T_ * d), grad_rows(N * d), unweighted(T_ * d);
  std::vector<W> grad_w(T_ * k);
  GatherRows<T>(x.data(), token.data(), d, rows.data(), 0, N);
  CombineRows<T, W>(rows.data(), pos.data(), w.data(), k, d, out.data(), 0, T_);
  CombineRows<T, W>(rows.data(), pos.data(), nullptr, k, d, unweighted.data(), 0, T_);
  ScatterWeightedRows<T, W>(g.data(), assignment.data(), w.data(), k, d, grad_rows.data(), 0, N);
  CombineWeightGrad<T, W>(g.data(), rows.data(), pos.data(), k, d, grad_w.data(), 0, T_);

  Dev<T> d_x(x), d_g(g), d_rows(N * d), d_out(T_ * d), d_unw(T_ * d), d_grows(N * d);
  Dev<W> d_w(w), d_gw(T_ * k);
  Dev<int64_t> d_token(token), d_pos(pos), d_assign(assignment);
  ASSERT_TRUE(cuda::GatherRows<T>(d_x.get(), d_token.get(), N, d, d_rows.get(), nullptr).ok());
  ASSERT_TRUE((cuda::CombineRows<T, W>(d_rows.get(), d_pos.get(), d_w.get(), k, T_, d, d_out.get(), nullptr).ok()));
  ASSERT_TRUE((cuda::CombineRows<T, W>(d_rows.get(), d_pos.get(), nullptr, k, T_, d, d_unw.get(), nullptr).ok()));
  ASSERT_TRUE((cuda::ScatterWeightedRows<T, W>(d_g.get(), d_assign.get(), d_w.get(), k, N, d, d_grows.get(), nullptr)
                   .ok()));
  ASSERT_TRUE(
      (cuda::CombineWeightGrad<T, W>(d_g.get(), d_rows.get(), d_pos.get(), k, T_, d, d_gw.get(), nullptr).ok()));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  // Gathers and the weighted scatter (one product in the accumulator, rounded
  // to T the same way) are the same arithmetic on both: equal.
  ExpectClose(Wide(d_rows.Host()), Wide(rows), {}, "gathered rows");
  ExpectClose(Wide(d_grows.Host()), Wide(grad_rows), {}, "scatter weighted rows");
  // Combine: the same k products summed in choice order in the accumulator;
  // the GPU may contract a multiply-add into an FMA, changing each step's
  // rounding by at most one unit roundoff of the terms so far (2k u sum|w x|),
  // and the two sums may then round to neighbouring values of T (1 ulp).
  std::vector<double> weighted(T_ * d, 0.0), plain(T_ * d, 0.0), dots(T_ * k, 0.0);
  for (int64_t t = 0; t < T_; ++t)
    for (int j = 0; j < k; ++j) {
      if (pos[t * k + j] < 0) continue;
      for (int64_t c = 0; c < d; ++c) {
        const double x_tc = std::fabs(ToFloat(x[t * d + c]));
        weighted[t * d + c] += std::fabs(ToFloat(w[t * k + j])) * x_tc;
        plain[t * d + c] += x_tc;
        dots[t * k + j] += std::fabs(ToFloat(g[t * d + c])) * x_tc;
      }
    }
  const Bound sum_of_k{Spacing<T>(), 2.0 * k * RoundOff<T>(), Subnormal<T>()};
  ExpectClose(Wide(d_out.Host()), Wide(out), sum_of_k, "combine", weighted);
  ExpectClose(Wide(d_unw.Host()), Wide(unweighted), sum_of_k, "combine (no weight)", plain);
  // Weight gradient: a d-term dot product in the accumulator, stored as W (no
  // further rounding), summed in another order (the host loop: d - 1 roundings;
  // the GPU: d / 32 per lane, then a 5-level shuffle tree), each product
  // rounded once: within (d + d / 32 + 8) u of sum |g x|.
  const double dot_roundings = static_cast<double>(d + d / 32 + 8);
  ExpectClose(Wide(d_gw.Host()), Wide(grad_w), {0, dot_roundings * RoundOff<T>(), Subnormal<W>()},
              "combine weight grad", dots);
}

TEST(CudaKernels, PermuteAndCombineMatchCpuTwins) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(3);
  for (int64_t d : {33, 64, 1000, 2048}) {  // odd (scalar path) and 16-byte multiples (vector path)
    CheckPermute<float>(300, 8, 2, d, rng);
    CheckPermute<double>(200, 7, 3, d, rng);
    CheckPermute<bf16>(257, 16, 4, d, rng);
    CheckPermute<f16>(129, 6, 6, d, rng);
  }
  CheckPermute<float>(0, 4, 2, 64, rng);  // zero tokens
}

template <typename T>
void CheckActivation(Activation act, bool gated, int64_t n, std::mt19937& rng) {
  SCOPED_TRACE(testing::Message() << "act=" << int(act) << " gated=" << gated << " n=" << n << " bytes=" << sizeof(T));
  const std::vector<T> h = Random<T>(n, rng, 2.0f), g = Random<T>(n, rng), ga = Random<T>(n, rng);
  std::vector<T> a(n), gh(n), gg(n), a2(n);
  const T* gp = gated ? g.data() : nullptr;
  ActivationForward<T>(h.data(), gp, act, a.data(), 0, n);
  ActivationBackward<T>(ga.data(), h.data(), gp, act, gh.data(), gated ? gg.data() : nullptr, a2.data(), 0, n);
  Dev<T> d_h(h), d_g(g), d_ga(ga), d_a(n), d_gg(n), d_a2(n);
  ASSERT_TRUE(cuda::ActivationForward<T>(d_h.get(), gated ? d_g.get() : nullptr, act, n, d_a.get(), nullptr).ok());
  // grad_h written over grad_a (the layer does this in place).
  ASSERT_TRUE(cuda::ActivationBackward<T>(d_ga.get(), d_h.get(), gated ? d_g.get() : nullptr, act, n, d_ga.get(),
                                          gated ? d_gg.get() : nullptr, d_a2.get(), nullptr)
                  .ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  // The same formulas (kernels/activation.h) in the accumulator, but the
  // GPU's exp / erfc are within 2 / 4 ulp where the host's are within 1, and
  // it may contract multiply-adds. Each value and derivative is a few
  // operations on terms bounded by (1 + |h|) (times |g| and |grad_a| where they
  // multiply in): 32 u of that covers both sides' errors; then 1 ulp of T.
  std::vector<double> value_scale(n), grad_h_scale(n), grad_g_scale(n);
  for (int64_t i = 0; i < n; ++i) {
    const double hi = 1 + std::fabs(ToFloat(h[i])), gi = gated ? std::fabs(ToFloat(g[i])) : 1.0;
    const double gai = std::fabs(ToFloat(ga[i]));
    value_scale[i] = hi * gi;
    grad_h_scale[i] = gai * gi * hi;
    grad_g_scale[i] = gai * hi;
  }
  const Bound formula{Spacing<T>(), 32 * RoundOff<T>(), Subnormal<T>()};
  ExpectClose(Wide(d_a.Host()), Wide(a), formula, "activation forward", value_scale);
  ExpectClose(Wide(d_a2.Host()), Wide(a2), formula, "activation recomputed in backward", value_scale);
  ExpectClose(Wide(d_ga.Host()), Wide(gh), formula, "grad_h", grad_h_scale);
  if (gated) ExpectClose(Wide(d_gg.Host()), Wide(gg), formula, "grad_g", grad_g_scale);
}

TEST(CudaKernels, FusedActivationMatchesCpuTwin) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(11);
  for (Activation act : {Activation::kGelu, Activation::kRelu, Activation::kSilu})
    for (bool gated : {false, true})
      for (int64_t n : {int64_t(0), int64_t(1), int64_t(1001), int64_t(1 << 16)}) {  // odd: scalar path
        CheckActivation<float>(act, gated, n, rng);
        CheckActivation<double>(act, gated, n, rng);
        CheckActivation<bf16>(act, gated, n, rng);
        CheckActivation<f16>(act, gated, n, rng);
      }
  // The CPU twins' derivative against a central difference: kernels_test.cc
  // (Activation.DerivativeMatchesCentralDifference), which runs without a GPU.
}

TEST(CudaKernels, InvertPositionsIsTheInverse) {
  SKIP_WITHOUT_GPU();
  std::vector<int64_t> pos = {3, -1, 0, 2, -1, 1};
  std::vector<int64_t> want(4);
  ASSERT_TRUE(InvertPositions(pos.data(), 6, 4, want.data()).ok());
  Dev<int64_t> d_pos(pos), d_out(4);
  ASSERT_TRUE(cuda::InvertPositions(d_pos.get(), 6, d_out.get(), nullptr).ok());
  EXPECT_EQ(d_out.Host(), want);
}

// Reference for the three grouped forms in double.
std::vector<double> ReferenceGemm(cuda::GemmOp op, const std::vector<int64_t>& m, int64_t K, int64_t N,
                                  const std::vector<double>& a, const std::vector<double>& b,
                                  const std::vector<double>& c0, float beta) {
  const int G = static_cast<int>(m.size());
  int64_t total = 0;
  for (int64_t v : m) total += v;
  std::vector<double> c(op == cuda::GemmOp::kTN ? G * K * N : total * (op == cuda::GemmOp::kNN ? N : K), 0.0);
  int64_t off = 0;
  for (int g = 0; g < G; ++g) {
    for (int64_t r = 0; r < m[g]; ++r) {
      const int64_t row = off + r;
      if (op == cuda::GemmOp::kNN)
        for (int64_t j = 0; j < N; ++j)
          for (int64_t q = 0; q < K; ++q) c[row * N + j] += a[row * K + q] * b[(g * K + q) * N + j];
      else if (op == cuda::GemmOp::kNT)
        for (int64_t q = 0; q < K; ++q)
          for (int64_t j = 0; j < N; ++j) c[row * K + q] += a[row * N + j] * b[(g * K + q) * N + j];
      else
        for (int64_t q = 0; q < K; ++q)
          for (int64_t j = 0; j < N; ++j) c[(g * K + q) * N + j] += a[row * K + q] * b[row * N + j];
    }
    off += m[g];
  }
  if (op == cuda::GemmOp::kTN)
    for (size_t i = 0; i < c.size(); ++i) c[i] += beta * c0[i];
  return c;
}

template <typename T>
void CheckGroupedGemm(cublasHandle_t handle, cuda::DType dt, cuda::GemmOp op, cuda::GemmAlgo algo, float beta,
                      std::mt19937& rng) {
  SCOPED_TRACE(testing::Message() << "op=" << int(op) << " algo=" << int(algo) << " bytes=" << sizeof(T)
                                  << " beta=" << beta);
  const std::vector<int64_t> m = {37, 0, 128, 1, 250};  // an empty expert and odd sizes
  const int64_t K = 48, N = 72;
  int64_t total = 0;
  for (int64_t v : m) total += v;
  const int G = static_cast<int>(m.size());
  const size_t na = total * (op == cuda::GemmOp::kNT ? N : K);
  const size_t nb = op == cuda::GemmOp::kTN ? total * N : G * K * N;
  const size_t nc = op == cuda::GemmOp::kTN ? G * K * N : total * (op == cuda::GemmOp::kNN ? N : K);
  const std::vector<T> a = Random<T>(na, rng), b = Random<T>(nb, rng), c0 = Random<T>(nc, rng);
  const std::vector<double> want = ReferenceGemm(op, m, K, N, Wide(a), Wide(b), Wide(c0), beta);
  auto magnitude = [](std::vector<double> v) {
    for (double& x : v) x = std::fabs(x);
    return v;
  };
  // sum |a| |b| (+ |beta c0|) per element: what the rounding errors scale with.
  const std::vector<double> scale =
      ReferenceGemm(op, m, K, N, magnitude(Wide(a)), magnitude(Wide(b)), magnitude(Wide(c0)), std::fabs(beta));
  Dev<T> d_a(a), d_b(b);
  Dev<T> d_c(beta != 0 ? Dev<T>(c0).Host() : std::vector<T>(nc, Store<T>(NAN)));
  Dev<char> ws(cuda::GroupedGemmWorkspaceBytes(G, algo));
  cuda::GroupedGemm gemm;
  gemm.op = op, gemm.ab = dt, gemm.c = dt, gemm.groups = G, gemm.rows = m.data(), gemm.k = K, gemm.n = N;
  gemm.a = d_a.get(), gemm.b = d_b.get(), gemm.out = d_c.get(), gemm.beta = beta;
  const absl::Status st =
      cuda::RunGroupedGemm(handle, gemm, algo, ws.get(), cuda::GroupedGemmWorkspaceBytes(G, algo), nullptr);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  // cuBLAS sums the inner dimension in fp32 (CUBLAS_COMPUTE_32F: no TF32) in
  // an order of its own (tiles, split-K): within inner u sum |a| |b| for any
  // order, doubled because tensor-core accumulation need not round to
  // nearest; the reference is exact enough in double. Then 1 ulp of T.
  const int64_t inner = op == cuda::GemmOp::kNN ? K : op == cuda::GemmOp::kNT ? N : *std::max_element(m.begin(), m.end());
  // With beta != 0 and 16-bit C, cuBLAS rounds the product to T before adding
  // beta C (seen on an H200: where A^T B and C nearly cancel, up to 3.8 ulps
  // of the sum, with reduced-precision reductions allowed or not): half an
  // ulp of T of the product more. torch's bf16 gradient accumulation
  // (grad += new bf16 grad) rounds the same way.
  std::vector<double> product_rounding;
  if (beta != 0 && sizeof(T) == 2) {
    product_rounding = ReferenceGemm(op, m, K, N, Wide(a), Wide(b), Wide(c0), 0.0f);
    for (double& v : product_rounding) v = std::fabs(v) * Spacing<T>() / 2;
  }
  ExpectClose(Wide(d_c.Host()), want, {Spacing<T>(), 2.0 * (inner + 2) * RoundOff<T>(), Subnormal<T>()},
              "grouped gemm", scale, product_rounding);
}

TEST(CudaKernels, GroupedGemmMatchesReference) {
  SKIP_WITHOUT_GPU();
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  std::mt19937 rng(5);
  for (auto algo : {cuda::GemmAlgo::kLoop, cuda::GemmAlgo::kGrouped})
    for (auto op : {cuda::GemmOp::kNN, cuda::GemmOp::kNT, cuda::GemmOp::kTN})
      for (float beta : {0.0f, 1.0f}) {
        if (beta != 0 && op != cuda::GemmOp::kTN) continue;
        CheckGroupedGemm<float>(handle, cuda::DType::kFloat, op, algo, beta, rng);
        CheckGroupedGemm<bf16>(handle, cuda::DType::kBFloat16, op, algo, beta, rng);
        CheckGroupedGemm<f16>(handle, cuda::DType::kHalf, op, algo, beta, rng);
      }
  cuda::GroupedGemm bad;
  bad.groups = 1;
  const int64_t rows = 4;
  bad.rows = &rows, bad.k = 0, bad.n = 4;
  const absl::Status st = cuda::RunGroupedGemm(handle, bad, cuda::GemmAlgo::kLoop, nullptr, 0, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  cublasDestroy(handle);
}

}  // namespace
}  // namespace dynamoe::kernels
