#include "placement/online_fit.h"

#include <algorithm>
#include <cmath>

namespace dynamoe::placement {
namespace {

constexpr int kLink = 4;  // messages intra, inter; bytes intra, inter

// Solves A x = b (k x k, symmetric, row-major) over the columns with use[j],
// by Cholesky in column order. A column whose pivot falls below a relative
// tolerance of its diagonal (all zero, or a combination of earlier columns)
// is dropped: use[j] = false, x[j] = 0.
void SolveDropping(const std::vector<double>& A, const std::vector<double>& b, int k, std::vector<char>& use,
                   std::vector<double>& x) {
  std::vector<double> L(k * k, 0.0);
  for (int j = 0; j < k; ++j) {
    if (!use[j]) continue;
    double s = A[j * k + j];
    for (int m = 0; m < j; ++m)
      if (use[m]) s -= L[j * k + m] * L[j * k + m];
    if (!(A[j * k + j] > 0) || !(s > 1e-9 * A[j * k + j])) {
      use[j] = 0;
      continue;
    }
    L[j * k + j] = std::sqrt(s);
    for (int i = j + 1; i < k; ++i) {
      if (!use[i]) continue;
      double t = A[i * k + j];
      for (int m = 0; m < j; ++m)
        if (use[m]) t -= L[i * k + m] * L[j * k + m];
      L[i * k + j] = t / L[j * k + j];
    }
  }
  std::vector<double> z(k, 0.0);
  for (int j = 0; j < k; ++j) {
    if (!use[j]) continue;
    double t = b[j];
    for (int m = 0; m < j; ++m)
      if (use[m]) t -= L[j * k + m] * z[m];
    z[j] = t / L[j * k + j];
  }
  x.assign(k, 0.0);
  for (int j = k - 1; j >= 0; --j) {
    if (!use[j]) continue;
    double t = z[j];
    for (int m = j + 1; m < k; ++m)
      if (use[m]) t -= L[m * k + j] * x[m];
    x[j] = t / L[j * k + j];
  }
}

// beta minimising sum_i |y_i - x_i . beta| / |y_i| (least relative absolute
// error, by iteratively reweighted least squares). X is n x k row-major.
// Columns without `fit` keep beta0, as do columns the data do not identify
// and those with `nonneg` that come out negative (then the rest is refitted).
// Returns which columns were fitted.
std::vector<char> RobustFit(const std::vector<double>& X, const std::vector<double>& y, int k,
                            const std::vector<double>& beta0, const std::vector<char>& nonneg,
                            std::vector<double>& beta) {
  const size_t n = y.size();
  beta = beta0;
  std::vector<char> use(k, 1);
  if (n == 0) return std::vector<char>(k, 0);
  std::vector<double> ay(n);
  for (size_t i = 0; i < n; ++i) ay[i] = std::fabs(y[i]);
  // Relative errors of steps near 0 s would dominate: floor the denominators.
  const double floor = 1e-3 * MedianOf(ay) + 1e-12;
  for (double& v : ay) v = std::max(v, floor);
  for (int pass = 0; pass <= k; ++pass) {
    // Unidentified columns first, on unit weights (the weights must not decide it).
    {
      std::vector<double> A(k * k, 0.0), b(k, 0.0), x;
      for (size_t i = 0; i < n; ++i)
        for (int p = 0; p < k; ++p)
          for (int q = 0; q < k; ++q) A[p * k + q] += X[i * k + p] * X[i * k + q];
      SolveDropping(A, b, k, use, x);
    }
    std::vector<double> yr(n), w(n);
    for (size_t i = 0; i < n; ++i) {
      yr[i] = y[i];
      for (int j = 0; j < k; ++j)
        if (!use[j]) yr[i] -= X[i * k + j] * beta0[j];
      w[i] = 1.0 / ay[i];
    }
    std::vector<double> cur(k, 0.0);
    for (int iter = 0; iter < 60; ++iter) {
      std::vector<double> A(k * k, 0.0), b(k, 0.0), x;
      for (size_t i = 0; i < n; ++i)
        for (int p = 0; p < k; ++p) {
          if (!use[p]) continue;
          const double wx = w[i] * X[i * k + p];
          b[p] += wx * yr[i];
          for (int q = 0; q < k; ++q)
            if (use[q]) A[p * k + q] += wx * X[i * k + q];
        }
      std::vector<char> u = use;  // a column degenerate under these weights only stays 0 this round
      SolveDropping(A, b, k, u, x);
      double change = 0, size = 0;
      for (int j = 0; j < k; ++j) change += std::fabs(x[j] - cur[j]), size += std::fabs(x[j]);
      cur = x;
      if (iter > 0 && change <= 1e-12 * size) break;
      // |r| / y = w * r^2 with w = 1 / (y |r|); |r| floored so exact fits stay finite.
      for (size_t i = 0; i < n; ++i) {
        double r = yr[i];
        for (int j = 0; j < k; ++j)
          if (use[j]) r -= X[i * k + j] * cur[j];
        w[i] = 1.0 / (ay[i] * std::max(std::fabs(r), 1e-7 * ay[i]));
      }
    }
    // The most negative rate that must not be goes back to the prior; refit the rest.
    int worst = -1;
    for (int j = 0; j < k; ++j)
      if (use[j] && nonneg[j] && cur[j] <= 0 && (worst < 0 || cur[j] < cur[worst])) worst = j;
    for (int j = 0; j < k; ++j) beta[j] = use[j] ? cur[j] : beta0[j];
    if (worst < 0) break;
    use[worst] = 0;
  }
  for (int j = 0; j < k; ++j)
    if (use[j] && nonneg[j] && beta[j] <= 0) use[j] = 0, beta[j] = beta0[j];
  return use;
}

}  // namespace

double MedianOf(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

RankTimes TimesFromPhases(const std::vector<std::string>& names, const double* seconds) {
  RankTimes t;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& n = names[i];
    const double s = seconds[i];
    t.total += s;
    if (n == "experts") t.experts += s;
    if (n == "dispatch" || n == "combine" || n == "shadow_broadcast") t.exchange += s;
    if (n == "count_allgather") t.wait += s;
  }
  return t;
}

OnlineFit::OnlineFit(ClusterSpec prior, LayerSpec layer, OnlineFitOptions options)
    : prior_(prior), layer_(layer), options_(options) {
  options_.window_steps = std::max<int64_t>(1, options_.window_steps);
  options_.min_steps = std::clamp<int64_t>(options_.min_steps, 1, options_.window_steps);
  options_.max_ranks_per_step = std::max<int64_t>(1, options_.max_ranks_per_step);
  rates_.seconds_per_row = layer_.ForwardFlopsPerRow() / prior_.flops;
  rates_.intra_node_latency_s = prior_.intra_node_latency_s;
  rates_.inter_node_latency_s = prior_.inter_node_latency_s;
  rates_.intra_node_bw = prior_.intra_node_bw;
  rates_.inter_node_bw = prior_.inter_node_bw;
}

double OnlineFit::Link(const Side& v) const {
  return v[0] * rates_.intra_node_latency_s + v[1] * rates_.inter_node_latency_s + v[2] / rates_.intra_node_bw +
         v[3] / rates_.inter_node_bw;
}

OnlineFit::Side OnlineFit::LinkOf(const Shape& s) const {
  // The cost model's bottleneck: the slowest side under the current rates; the first on ties.
  auto bottleneck = [&](const std::vector<Side>& sides) {
    Side best{};
    double t = 0;
    for (const Side& v : sides)
      if (Link(v) > t) t = Link(v), best = v;
    return best;
  };
  const Side tokens = bottleneck(s.tokens), weights = bottleneck(s.weights);
  Side link;
  // The forward: two token exchanges (dispatch, combine) and the broadcast.
  for (int j = 0; j < kLink; ++j) link[j] = 2 * tokens[j] + weights[j];
  return link;
}

OnlineFit::Shape OnlineFit::ShapeOf(const CountMatrix& counts, const Plan& plan) const {
  const int64_t P = counts.world_size;
  Shape s;
  s.rows.assign(P, 0);
  std::vector<int64_t> link(P * P, 0);
  ForEachRoute(plan, counts, [&](int64_t src, int64_t, int64_t dst, int64_t n) {
    s.rows[dst] += n;
    if (src != dst) link[src * P + dst] += n;
  });
  s.max_rows = *std::max_element(s.rows.begin(), s.rows.end());
  // Rank a's send side is sides[a], rank b's receive side sides[P + b].
  auto add = [&](std::vector<Side>& sides, int64_t a, int64_t b, double bytes) {
    const int c = prior_.SameNode(a, b) ? 0 : 1;
    sides[a][c] += 1, sides[a][2 + c] += bytes;
    sides[P + b][c] += 1, sides[P + b][2 + c] += bytes;
  };
  s.tokens.assign(2 * P, Side{});
  s.weights.assign(2 * P, Side{});
  for (int64_t a = 0; a < P; ++a)
    for (int64_t b = 0; b < P; ++b)
      if (link[a * P + b] > 0) add(s.tokens, a, b, static_cast<double>(link[a * P + b]) * layer_.RowBytes());
  for (int64_t e = 0; e < plan.num_experts; ++e)
    for (int32_t r : plan.copies[e]) add(s.weights, plan.owner[e], r, layer_.ExpertBytes());
  return s;
}

void OnlineFit::Add(const CountMatrix& counts, const Plan& plan,
                    const std::vector<std::pair<int64_t, RankTimes>>& measured) {
  if (measured.empty()) return;
  Step st;
  st.shape = ShapeOf(counts, plan);
  // At most max_ranks_per_step ranks, evenly spaced, so the fit's cost does not grow with the world.
  const size_t n = measured.size(), keep = std::min<size_t>(n, static_cast<size_t>(options_.max_ranks_per_step));
  for (size_t i = 0; i < keep; ++i) st.measured.push_back(measured[i * n / keep]);
  if (ready()) {
    const double predicted =
        rates_.fixed_s + rates_.seconds_per_row * static_cast<double>(st.shape.max_rows) + Link(LinkOf(st.shape));
    std::vector<double> e;
    for (const auto& [r, t] : st.measured)
      if (t.total > 0) e.push_back(std::fabs(predicted - t.total) / t.total);
    if (!e.empty()) errors_.push_back(MedianOf(e));
    if (static_cast<int64_t>(errors_.size()) > options_.window_steps) errors_.pop_front();
  }
  window_.push_back(std::move(st));
  if (static_cast<int64_t>(window_.size()) > options_.window_steps) window_.pop_front();
  ++added_;
  Refit();
}

void OnlineFit::Refit() {
  const double prior_spr = layer_.ForwardFlopsPerRow() / prior_.flops;
  // Experts: a * rows + b over every kept (step, rank).
  {
    std::vector<double> X, y;
    for (const Step& st : window_)
      for (const auto& [r, t] : st.measured) {
        X.push_back(static_cast<double>(st.shape.rows[r]));
        X.push_back(1.0);
        y.push_back(t.experts);
      }
    std::vector<double> beta;
    const std::vector<char> used = RobustFit(X, y, 2, {prior_spr, 0.0}, {1, 0}, beta);
    if (!used[0]) {
      // Rows that barely vary next to the noise leave the slope unfitted: the
      // median seconds per row through the origin beats the prior (often a
      // GPU's rate on a CPU run).
      std::vector<double> ratio;
      for (size_t i = 0; i < y.size(); ++i)
        if (X[2 * i] > 0) ratio.push_back(y[i] / X[2 * i]);
      if (!ratio.empty() && MedianOf(ratio) > 0) beta = {MedianOf(ratio), 0.0};
    }
    rates_.seconds_per_row = beta[0];
    rates_.expert_fixed_s = beta[1];
  }
  const double a = rates_.seconds_per_row;
  // Exchange: per step the median over ranks of its time less the wait for
  // the slowest rank's experts. The bottleneck sides depend on the rates:
  // choose them, fit, and choose again (a few rounds; a fixed count keeps
  // it deterministic).
  std::vector<double> y;
  for (const Step& st : window_) {
    std::vector<double> v;
    for (const auto& [r, t] : st.measured)
      v.push_back(t.exchange - a * static_cast<double>(st.shape.max_rows - st.shape.rows[r]));
    y.push_back(MedianOf(v));
  }
  const int k = kLink + 1;
  const std::vector<double> beta0 = {prior_.intra_node_latency_s, prior_.inter_node_latency_s,
                                     1.0 / prior_.intra_node_bw, 1.0 / prior_.inter_node_bw, 0.0};
  for (int round = 0; round < 3; ++round) {
    std::vector<double> X, beta;
    for (const Step& st : window_) {
      const Side link = LinkOf(st.shape);
      X.insert(X.end(), link.begin(), link.end());
      X.push_back(1.0);
    }
    const std::vector<char> used = RobustFit(X, y, k, beta0, {1, 1, 1, 1, 0}, beta);
    rates_.intra_node_latency_s = beta[0], rates_.inter_node_latency_s = beta[1];
    rates_.intra_node_bw = 1.0 / beta[2], rates_.inter_node_bw = 1.0 / beta[3];
    for (int j = 0; j < kLink; ++j) rates_.fitted[j] = used[j] != 0;
    exchange_c_ = beta[kLink];
  }
  // Every other per-step cost: the residual of the totals that minimises the
  // sum of |error| / total (a median weighted by 1 / total), as the other fits
  // do: the error reported is relative.
  std::vector<std::pair<double, double>> res;  // (residual, weight)
  double half = 0;
  for (const Step& st : window_) {
    const double core = a * static_cast<double>(st.shape.max_rows) + Link(LinkOf(st.shape));
    for (const auto& [r, t] : st.measured) {
      const double w = 1.0 / std::max(t.total, 1e-9);
      res.emplace_back(t.total - core, w);
      half += w / 2;
    }
  }
  std::sort(res.begin(), res.end());
  rates_.fixed_s = 0;
  for (const auto& [v, w] : res) {
    rates_.fixed_s = v;
    if ((half -= w) <= 0) break;
  }
}

ClusterSpec OnlineFit::Cluster() const {
  ClusterSpec c = prior_;
  if (rates_.seconds_per_row > 0 && layer_.ForwardFlopsPerRow() > 0)
    c.flops = layer_.ForwardFlopsPerRow() / rates_.seconds_per_row;
  c.intra_node_latency_s = rates_.intra_node_latency_s, c.inter_node_latency_s = rates_.inter_node_latency_s;
  c.intra_node_bw = rates_.intra_node_bw, c.inter_node_bw = rates_.inter_node_bw;
  return c;
}

double OnlineFit::PredictStep(const CountMatrix& counts, const Plan& plan) const {
  const Shape s = ShapeOf(counts, plan);
  return rates_.fixed_s + rates_.seconds_per_row * static_cast<double>(s.max_rows) + Link(LinkOf(s));
}

double OnlineFit::PredictExperts(const CountMatrix& counts, const Plan& plan, int64_t rank) const {
  return rates_.seconds_per_row * static_cast<double>(ShapeOf(counts, plan).rows[rank]) + rates_.expert_fixed_s;
}

double OnlineFit::PredictExchange(const CountMatrix& counts, const Plan& plan, int64_t rank) const {
  const Shape s = ShapeOf(counts, plan);
  return Link(LinkOf(s)) + exchange_c_ + rates_.seconds_per_row * static_cast<double>(s.max_rows - s.rows[rank]);
}

double OnlineFit::MedianError() const {
  return errors_.empty() ? -1 : MedianOf(std::vector<double>(errors_.begin(), errors_.end()));
}

}  // namespace dynamoe::placement
