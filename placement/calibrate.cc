#include "placement/calibrate.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "placement/plan.h"

namespace dynamoe::placement {
namespace {

struct Sample {
  double compute_rows = 0, exchange_rows = 0;  // the x of each fit
  double experts = 0, exchange = 0, total = 0;  // recorded seconds
  double other = 0;                             // recorded seconds of the phases without a fit
  double wait = 0;                              // of those, the count all-gather (absorbs peers' lag)
  int64_t layer = 0;
};

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// y = slope * x + intercept minimising the sum of |residual| / y over the
// fit steps (iteratively reweighted least squares). Relative absolute error
// is what is reported, and recorded phase times on a shared machine have
// heavy upper tails (preemption, a straggling peer) that would drag a
// least-squares line off the typical step.
void Fit(const std::vector<Sample>& s, size_t n, double Sample::*x, double Sample::*y, PhaseFit* f) {
  std::vector<double> w(n);
  for (size_t i = 0; i < n; ++i) w[i] = 1.0 / std::max(s[i].*y, 1e-9);
  f->slope = 0, f->intercept = 0;
  for (int iter = 0; iter < 50; ++iter) {
    double sw = 0, mx = 0, my = 0;
    for (size_t i = 0; i < n; ++i) sw += w[i], mx += w[i] * (s[i].*x), my += w[i] * (s[i].*y);
    if (sw <= 0) break;
    mx /= sw, my /= sw;
    double sxy = 0, sxx = 0;
    for (size_t i = 0; i < n; ++i) {
      const double dx = s[i].*x - mx;
      sxy += w[i] * dx * (s[i].*y - my), sxx += w[i] * dx * dx;
    }
    const double slope = sxx > 0 ? sxy / sxx : 0, intercept = my - slope * mx;
    const bool settled = iter > 0 && std::fabs(slope - f->slope) <= 1e-9 * std::fabs(slope) &&
                         std::fabs(intercept - f->intercept) <= 1e-12;
    f->slope = slope, f->intercept = intercept;
    if (settled) break;
    // |r| / y = w_ls * r^2 with w_ls = 1 / (y |r|), floored so exact fits stay finite.
    for (size_t i = 0; i < n; ++i) {
      const double yi = std::max(s[i].*y, 1e-9);
      const double r = std::fabs(s[i].*y - (slope * (s[i].*x) + intercept));
      w[i] = 1.0 / (yi * std::max(r, 1e-6 * yi));
    }
  }
}

}  // namespace

absl::StatusOr<Calibration> Calibrate(const Trace& trace, double heldout) {
  DYNAMOE_CHECK_ARG(heldout > 0 && heldout < 1, "calibrate: the held-out fraction must be in (0, 1), got ", heldout);
  const auto index = [&](const char* name) -> int64_t {
    for (size_t i = 0; i < trace.phase_names.size(); ++i)
      if (trace.phase_names[i] == name) return static_cast<int64_t>(i);
    return -1;
  };
  const int64_t experts = index("experts"), dispatch = index("dispatch"), combine = index("combine");
  const int64_t gather = index("count_allgather");
  DYNAMOE_CHECK_ARG(experts >= 0 && dispatch >= 0 && combine >= 0,
                    "calibrate: the trace names no experts/dispatch/combine phases; record it with DYNAMOE_TRACE");
  std::vector<Sample> samples;
  for (const TraceStep& st : trace.steps) {
    if (st.phase_seconds.size() != trace.phase_names.size()) continue;
    const int64_t P = st.kept.world_size;
    // Plan::None homes experts only when they divide over the ranks.
    DYNAMOE_CHECK_ARG(st.plan || st.kept.num_experts % P == 0, "calibrate: step ", st.step, " has ",
                      st.kept.num_experts, " experts, not a multiple of its ", P, " ranks");
    const Plan plan = st.plan ? *st.plan : Plan::None(P, st.kept.num_experts);
    std::vector<int64_t> rows(P, 0), send(P, 0), recv(P, 0);
    ForEachRoute(plan, st.kept, [&](int64_t s, int64_t, int64_t d, int64_t n) {
      rows[d] += n;
      if (s != d) send[s] += n, recv[d] += n;
    });
    // The recording rank's own work; the busiest rank's for merged traces.
    const int64_t r = trace.rank >= 0 && trace.rank < P ? trace.rank : -1;
    Sample x;
    x.layer = st.layer;
    x.compute_rows = static_cast<double>(r >= 0 ? rows[r] : *std::max_element(rows.begin(), rows.end()));
    x.exchange_rows = static_cast<double>(r >= 0 ? std::max(send[r], recv[r])
                                                 : std::max(*std::max_element(send.begin(), send.end()),
                                                            *std::max_element(recv.begin(), recv.end())));
    x.experts = st.phase_seconds[experts];
    x.exchange = st.phase_seconds[dispatch] + st.phase_seconds[combine];
    for (double v : st.phase_seconds) x.total += v;
    x.other = x.total - x.experts - x.exchange;
    x.wait = gather >= 0 ? st.phase_seconds[gather] : 0;
    samples.push_back(x);
  }
  DYNAMOE_CHECK_ARG(samples.size() >= 5, "calibrate: ", samples.size(),
                    " steps have phase timings; at least 5 are needed (imported CSV/JSONL traces have none)");
  // The first steps pay one-time costs (allocation, connection setup).
  const size_t warmup = std::min<size_t>(10, samples.size() / 10);
  samples.erase(samples.begin(), samples.begin() + static_cast<std::ptrdiff_t>(warmup));
  Calibration c;
  c.warmup_steps = static_cast<int64_t>(warmup);
  c.heldout_steps = std::max<int64_t>(1, static_cast<int64_t>(std::floor(heldout * samples.size())));
  c.fit_steps = static_cast<int64_t>(samples.size()) - c.heldout_steps;
  const size_t n = static_cast<size_t>(c.fit_steps);
  PhaseFit fe{"experts"}, fx{"exchange"};
  Fit(samples, n, &Sample::compute_rows, &Sample::experts, &fe);
  Fit(samples, n, &Sample::exchange_rows, &Sample::exchange, &fx);
  // Phases without a fit count at their median on the fit steps.
  std::vector<double> others, works;
  for (size_t i = 0; i < n; ++i) {
    others.push_back(samples[i].other);
    works.push_back(samples[i].other - samples[i].wait);
  }
  const double other = Median(others), other_work = Median(works);
  std::vector<double> err_e, err_x;
  for (size_t i = n; i < samples.size(); ++i) {
    const Sample& s = samples[i];
    const double pe = fe.slope * s.compute_rows + fe.intercept, px = fx.slope * s.exchange_rows + fx.intercept;
    if (s.experts > 0) err_e.push_back(std::fabs(pe - s.experts) / s.experts);
    if (s.exchange > 0) err_x.push_back(std::fabs(px - s.exchange) / s.exchange);
    if (s.total > 0) c.step_errors.push_back(std::fabs(pe + px + other - s.total) / s.total);
    const double work = s.total - s.wait;
    if (work > 0) c.work_errors.push_back(std::fabs(pe + px + other_work - work) / work);
  }
  fe.heldout_median_error = Median(err_e), fx.heldout_median_error = Median(err_x);
  c.fits = {fe, fx};
  c.step_median_error = Median(c.step_errors);
  c.work_median_error = Median(c.work_errors);
  const TraceLayerSpec& l = trace.layers.empty() ? TraceLayerSpec{} : trace.layers[samples[0].layer];
  if (l.d_model > 0 && l.d_hidden > 0) {
    const double flops_per_row = 2.0 * (l.gated ? 3 : 2) * l.d_model * l.d_hidden;
    if (fe.slope > 0) c.flops = flops_per_row / fe.slope;
    // Two exchanges (dispatch, combine) per forward.
    if (fx.slope > 0) c.bytes_per_second = 2.0 * static_cast<double>(l.d_model * l.bytes_per_element) / fx.slope;
  }
  return c;
}

}  // namespace dynamoe::placement
