#include "replay/calibrate.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "placement/cost_model.h"
#include "placement/plan.h"
#include "placement/quotas.h"

namespace dynamoe::placement {
namespace {

struct Sample {
  CountMatrix counts;
  Plan plan;
  int64_t rank = 0;  // whose times these are
  RankTimes times;
};

bool SameShape(const TraceLayerSpec& a, const TraceLayerSpec& b) {
  return a.d_model == b.d_model && a.d_hidden == b.d_hidden && a.gated == b.gated && a.bias == b.bias &&
         a.bytes_per_element == b.bytes_per_element && a.num_experts == b.num_experts;
}

}  // namespace

absl::StatusOr<Calibration> Calibrate(const Trace& trace, double heldout, ClusterSpec prior) {
  DYNAMOE_CHECK_ARG(heldout > 0 && heldout < 1, "calibrate: the held-out fraction must be in (0, 1), got ", heldout);
  const auto has = [&](const char* name) {
    return std::find(trace.phase_names.begin(), trace.phase_names.end(), name) != trace.phase_names.end();
  };
  DYNAMOE_CHECK_ARG(has("experts") && has("dispatch") && has("combine"),
                    "calibrate: the trace names no experts/dispatch/combine phases; record it with DYNAMOE_TRACE");
  // The first layer with timings, and the layers of its shape (the same rates apply).
  int64_t first = -1;
  for (const TraceStep& st : trace.steps)
    if (st.phase_seconds.size() == trace.phase_names.size() && st.layer >= 0 &&
        st.layer < static_cast<int64_t>(trace.layers.size())) {
      first = st.layer;
      break;
    }
  const TraceLayerSpec spec = first >= 0 ? trace.layers[first] : TraceLayerSpec{};
  const LayerSpec layer{std::max<int64_t>(spec.d_model, 1), spec.d_hidden, spec.gated, spec.bias,
                        std::max<int64_t>(spec.bytes_per_element, 1)};
  std::vector<Sample> samples;
  for (const TraceStep& st : trace.steps) {
    if (st.phase_seconds.size() != trace.phase_names.size() || st.layer < 0 ||
        st.layer >= static_cast<int64_t>(trace.layers.size()) || !SameShape(trace.layers[st.layer], spec))
      continue;
    const int64_t P = st.kept.world_size;
    // Plan::None homes experts only when they divide over the ranks.
    DYNAMOE_CHECK_ARG(st.plan || st.kept.num_experts % P == 0, "calibrate: step ", st.step, " has ",
                      st.kept.num_experts, " experts, not a multiple of its ", P, " ranks");
    DYNAMOE_CHECK_ARG(!st.plan || (st.plan->world_size == P && st.plan->num_experts == st.kept.num_experts),
                      "calibrate: step ", st.step, "'s plan does not match its count matrix");
    Sample s{st.kept, st.plan ? *st.plan : Plan::None(P, st.kept.num_experts)};
    // Recorded plans carry no quotas (a function of copies, counts and the
    // cluster): reassign them as the policy did, so rows route as they ran.
    // The cluster is the prior's (a trace does not record the configured one).
    if (s.plan.HasCopies()) {
      ClusterSpec c = prior;
      c.world_size = P;
      AssignBestQuotas(s.plan, s.counts, CostModel(c, layer));
    }
    // The recording rank's times; for merged traces, the busiest rank's.
    s.rank = trace.rank;
    if (s.rank < 0 || s.rank >= P) {
      std::vector<int64_t> rows(P, 0);
      ForEachRoute(s.plan, s.counts, [&](int64_t, int64_t, int64_t d, int64_t n) { rows[d] += n; });
      s.rank = std::max_element(rows.begin(), rows.end()) - rows.begin();
    }
    s.times = TimesFromPhases(trace.phase_names, st.phase_seconds.data());
    samples.push_back(std::move(s));
  }
  DYNAMOE_CHECK_ARG(samples.size() >= 5, "calibrate: ", samples.size(),
                    " steps have phase timings; at least 5 are needed (imported CSV/JSONL traces have none)");
  // The first steps pay one-time costs (allocation, connection setup).
  const size_t warmup = std::min<size_t>(10, samples.size() / 10);
  samples.erase(samples.begin(), samples.begin() + static_cast<std::ptrdiff_t>(warmup));
  Calibration c;
  c.layer = spec.name;
  c.warmup_steps = static_cast<int64_t>(warmup);
  c.heldout_steps = std::max<int64_t>(1, static_cast<int64_t>(std::floor(heldout * samples.size())));
  c.fit_steps = static_cast<int64_t>(samples.size()) - c.heldout_steps;
  const size_t n = static_cast<size_t>(c.fit_steps);
  prior.world_size = samples[0].counts.world_size;

  // The held-out check: one window over all fit steps, then frozen.
  OnlineFitOptions whole;
  whole.window_steps = static_cast<int64_t>(n);
  whole.min_steps = 1;
  OnlineFit fit(prior, layer, whole);
  std::vector<double> waits;
  for (size_t i = 0; i < n; ++i) {
    fit.Add(samples[i].counts, samples[i].plan, {{samples[i].rank, samples[i].times}});
    waits.push_back(samples[i].times.wait);
  }
  const double wait = MedianOf(waits);
  std::vector<double> err_e, err_x;
  for (size_t i = n; i < samples.size(); ++i) {
    const Sample& s = samples[i];
    const RankTimes& t = s.times;
    const double step = fit.PredictStep(s.counts, s.plan);
    const double pe = fit.PredictExperts(s.counts, s.plan, s.rank), px = fit.PredictExchange(s.counts, s.plan, s.rank);
    if (t.experts > 0) err_e.push_back(std::fabs(pe - t.experts) / t.experts);
    if (t.exchange > 0) err_x.push_back(std::fabs(px - t.exchange) / t.exchange);
    if (t.total > 0) c.step_errors.push_back(std::fabs(step - t.total) / t.total);
    const double work = t.total - t.wait;
    if (work > 0) c.work_errors.push_back(std::fabs(step - wait - work) / work);
  }
  c.fits = {{"experts", MedianOf(err_e)}, {"exchange", MedianOf(err_x)}};
  c.step_median_error = MedianOf(c.step_errors);
  c.work_median_error = MedianOf(c.work_errors);
  c.rates = fit.rates();
  c.cluster = fit.Cluster();
  if (spec.d_model > 0 && spec.d_hidden > 0 && c.rates.seconds_per_row > 0) c.flops = c.cluster.flops;
  if (spec.d_model > 0) c.bytes_per_second = c.rates.intra_node_bw;

  // What the runtime would report: its running fit over the whole trace.
  OnlineFit running(prior, layer);
  for (const Sample& s : samples) running.Add(s.counts, s.plan, {{s.rank, s.times}});
  c.online_median_error = running.MedianError();
  return c;
}

}  // namespace dynamoe::placement
