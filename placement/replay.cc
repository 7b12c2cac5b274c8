#include "placement/replay.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dynamoe::placement {
namespace {

bool SamePlan(const Plan& a, const Plan& b) { return a.owner == b.owner && a.copies == b.copies; }

// max / mean of the rows each rank computes under the plan.
double RowImbalance(const CountMatrix& counts, const Plan& plan) {
  std::vector<int64_t> rows(counts.world_size, 0);
  ForEachRoute(plan, counts, [&](int64_t, int64_t, int64_t d, int64_t n) { rows[d] += n; });
  return LoadImbalance(rows);
}

// Bytes the step moves between ranks under the plan.
double BytesMoved(const CountMatrix& counts, const Plan& plan, const CostModel& model) {
  int64_t off_rank = 0;
  ForEachRoute(plan, counts, [&](int64_t s, int64_t, int64_t d, int64_t n) { off_rank += s != d ? n : 0; });
  const double weights = static_cast<double>(plan.TotalCopies()) * model.layer().ExpertBytes() *
                         (model.options().training ? 2.0 : 1.0);
  return static_cast<double>(off_rank) * model.layer().RowBytes() * model.Exchanges() + weights;
}

double P99(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(0.99 * static_cast<double>(v.size())));
  return v[std::max<size_t>(rank, 1) - 1];
}

}  // namespace

absl::StatusOr<CountMatrix> Rehome(const CountMatrix& counts, int64_t world_size) {
  DYNAMOE_CHECK_ARG(world_size >= 1, "replay: world size must be >= 1, got ", world_size);
  DYNAMOE_CHECK_ARG(counts.world_size >= 1, "replay: a count matrix without ranks");
  DYNAMOE_CHECK_ARG(counts.num_experts % world_size == 0, "replay: ", counts.num_experts,
                    " experts do not divide over ", world_size,
                    " ranks (expert parallelism needs num_experts to be a multiple of the world size)");
  if (world_size == counts.world_size) return counts;
  const int64_t E = counts.num_experts;
  std::vector<int64_t> out(world_size * E);
  for (int64_t r = 0; r < world_size; ++r)
    std::copy_n(counts.counts.begin() + (r % counts.world_size) * E, E, out.begin() + r * E);
  return CountMatrix::Make(world_size, E, std::move(out));
}

absl::StatusOr<ReplayReport> Replay(const Trace& trace, const ReplayOptions& options) {
  DYNAMOE_CHECK_ARG(!trace.steps.empty(), "replay: the trace has no steps");
  DYNAMOE_CHECK_ARG(!options.policies.empty(), "replay: no policy to replay");
  ReplayReport report;
  report.world_size = options.world_size > 0 ? options.world_size : trace.steps[0].kept.world_size;
  report.steps = static_cast<int64_t>(trace.steps.size());
  ClusterSpec cluster = options.cluster;
  cluster.world_size = report.world_size;

  const int64_t total = report.steps * static_cast<int64_t>(options.policies.size());
  const int64_t every = std::max<int64_t>(1, total / 100);
  int64_t done = 0;
  for (const std::string& name : options.policies) {
    PolicyReport pr;
    pr.policy = name;
    // One stateful policy per layer, made on the layer's first step.
    std::vector<std::unique_ptr<Policy>> per_layer(trace.layers.size());
    std::vector<Plan> last(trace.layers.size());
    std::vector<bool> has_last(trace.layers.size(), false);
    double before = 0, after = 0, copies = 0, bytes = 0;
    for (const TraceStep& s : trace.steps) {
      DYNAMOE_CHECK_ARG(s.layer >= 0 && s.layer < static_cast<int64_t>(trace.layers.size()),
                        "replay: step ", s.step, " names layer ", s.layer, " of ", trace.layers.size());
      CountMatrix counts;
      DYNAMOE_ASSIGN_OR_RETURN(counts, Rehome(s.kept, report.world_size));
      auto& policy = per_layer[s.layer];
      if (!policy) {
        const TraceLayerSpec& l = trace.layers[s.layer];
        LayerSpec spec = options.default_layer;
        if (l.d_model > 0 && l.d_hidden > 0)
          spec = LayerSpec{l.d_model, l.d_hidden, l.gated, l.bias, l.bytes_per_element > 0 ? l.bytes_per_element : 2};
        PolicyOptions po = options.policy;
        po.layer = l.name;
        DYNAMOE_ASSIGN_OR_RETURN(policy, MakePolicy(name, cluster, spec, po));
      }
      Plan plan;
      DYNAMOE_ASSIGN_OR_RETURN(plan, policy->Step(counts));
      pr.step_seconds.push_back(policy->model().Predict(counts, plan).total);
      before += LoadImbalance(counts.ExpertLoads());
      after += RowImbalance(counts, plan);
      copies += static_cast<double>(plan.TotalCopies());
      bytes += BytesMoved(counts, plan, policy->model());
      if (has_last[s.layer] && !SamePlan(plan, last[s.layer])) ++pr.plan_changes;
      last[s.layer] = std::move(plan);
      has_last[s.layer] = true;
      if (options.progress && (++done % every == 0 || done == total)) options.progress(done, total);
    }
    const double n = static_cast<double>(pr.step_seconds.size());
    pr.mean_seconds = std::accumulate(pr.step_seconds.begin(), pr.step_seconds.end(), 0.0) / n;
    pr.p99_seconds = P99(pr.step_seconds);
    pr.imbalance_before = before / n, pr.imbalance_after = after / n, pr.copies_per_step = copies / n;
    pr.bytes_per_step = bytes / n;
    report.policies.push_back(std::move(pr));
  }
  for (const PolicyReport& p : report.policies)
    if (p.policy == "none")
      for (PolicyReport& q : report.policies) q.speedup_vs_none = q.mean_seconds > 0 ? p.mean_seconds / q.mean_seconds : 0;
  return report;
}

}  // namespace dynamoe::placement
