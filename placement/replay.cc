#include "placement/replay.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <mutex>
#include <new>
#include <numeric>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dynamoe::placement {
namespace {

bool SamePlan(const Plan& a, const Plan& b) { return a.owner == b.owner && a.copies == b.copies; }

// What the plan does with the step's rows: rows computed per rank and rows
// leaving their rank per exchange, in one pass over the matrix (the policy
// already predicted the time, so no second cost-model evaluation is needed).
struct Traffic {
  std::vector<int64_t> rows;
  int64_t off_rank = 0;
};

void RouteTotals(const CountMatrix& counts, const Plan& plan, Traffic& t) {
  const int64_t P = counts.world_size, E = counts.num_experts;
  t.rows.assign(P, 0);
  t.off_rank = 0;
  for (int64_t s = 0; s < P; ++s) {
    const int64_t* row = counts.counts.data() + s * E;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = row[e];
      if (n == 0) continue;
      if (plan.copies[e].empty()) {  // plain expert parallelism
        t.rows[plan.owner[e]] += n;
        t.off_rank += plan.owner[e] != s ? n : 0;
      } else if (plan.Holds(s, e)) {
        t.rows[s] += n;
      } else {
        t.off_rank += n;
        SplitRows(plan.owner[e], plan.copies[e], false, s, n, [&](int64_t d, int64_t r) { t.rows[d] += r; });
      }
    }
  }
}

// Bytes the step moves between ranks: token rows leaving their rank in every
// exchange, plus the copies' weights (and their gradients in training).
double BytesMoved(const Traffic& t, const Plan& plan, const CostModel& model) {
  const double weights = static_cast<double>(plan.TotalCopies()) * model.layer().ExpertBytes() *
                         (model.options().training ? 2.0 : 1.0);
  return static_cast<double>(t.off_rank) * model.layer().RowBytes() * model.Exchanges() + weights;
}

double P99(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(0.99 * static_cast<double>(v.size())));
  return v[std::max<size_t>(rank, 1) - 1];
}

}  // namespace

absl::StatusOr<CountMatrix> Rehome(const CountMatrix& counts, int64_t world_size) {
  DYNAMOE_CHECK_ARG(world_size >= 1 && world_size <= kMaxReplayWorld, "replay: world size must be in [1, ",
                    kMaxReplayWorld, "], got ", world_size);
  DYNAMOE_CHECK_ARG(counts.world_size >= 1, "replay: a count matrix without ranks");
  DYNAMOE_CHECK_ARG(world_size * counts.num_experts <= kMaxMatrixCells, "replay: ", world_size, " ranks x ",
                    counts.num_experts, " experts is over 2^24 count-matrix cells");
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

namespace {

// One policy on one layer: the unit of parallel work. Sums are per item and
// combined in layer order, so results do not depend on the thread count.
struct LayerResult {
  double after = 0, copies = 0, bytes = 0;
  int64_t plan_changes = 0;
  absl::Status status;
};

// Replays the steps of one layer (indices into trace.steps, in trace order)
// through a fresh instance of the policy; writes pr's per-step vectors (and
// the policy-independent `before`, when given: one policy's items fill it) at
// those indices.
LayerResult ReplayLayer(const Trace& trace, const std::vector<size_t>& steps, int64_t layer,
                        const ReplayOptions& options, const ClusterSpec& cluster, const std::string& name,
                        const std::function<void()>& tick, PolicyReport& pr, std::vector<double>* before) {
  LayerResult out;
  const TraceLayerSpec& l = trace.layers[layer];
  LayerSpec spec = options.default_layer;
  if (l.d_model > 0 && l.d_hidden > 0)
    spec = LayerSpec{l.d_model, l.d_hidden, l.gated, l.bias, l.bytes_per_element > 0 ? l.bytes_per_element : 2};
  PolicyOptions po = options.policy;
  po.layer = l.name;
  auto policy = MakePolicy(name, cluster, spec, po);
  if (!policy.ok()) return out.status = policy.status(), out;
  Plan last;
  bool has_last = false;
  Traffic traffic;
  for (size_t i : steps) {
    auto counts = Rehome(trace.steps[i].kept, cluster.world_size);
    if (!counts.ok()) return out.status = counts.status(), out;
    auto plan = (*policy)->Step(*counts);
    if (!plan.ok()) return out.status = plan.status(), out;
    // Every policy predicts its plan on the counts it was given.
    pr.step_seconds[i] = plan->predicted_step_seconds;
    RouteTotals(*counts, *plan, traffic);
    if (before) (*before)[i] = LoadImbalance(counts->ExpertLoads());
    pr.step_imbalance_after[i] = LoadImbalance(traffic.rows);
    pr.step_copies[i] = static_cast<int32_t>(plan->TotalCopies());
    out.after += pr.step_imbalance_after[i];
    out.copies += pr.step_copies[i];
    out.bytes += BytesMoved(traffic, *plan, (*policy)->model());
    if (has_last && !SamePlan(*plan, last)) ++out.plan_changes;
    last = std::move(*plan);
    has_last = true;
    tick();
  }
  return out;
}

}  // namespace

absl::StatusOr<ReplayReport> Replay(const Trace& trace, const ReplayOptions& options) {
  DYNAMOE_CHECK_ARG(!trace.steps.empty(), "replay: the trace has no steps");
  DYNAMOE_CHECK_ARG(!options.policies.empty(), "replay: no policy to replay");
  ReplayReport report;
  report.world_size = options.world_size > 0 ? options.world_size : trace.steps[0].kept.world_size;
  DYNAMOE_CHECK_ARG(report.world_size >= 1 && report.world_size <= kMaxReplayWorld,
                    "replay: the replayed world size must be in [1, ", kMaxReplayWorld, "], got ", report.world_size,
                    options.world_size > 0 ? "" : " (the trace's; choose another with the world size option)");
  report.steps = static_cast<int64_t>(trace.steps.size());
  ClusterSpec cluster = options.cluster;
  cluster.world_size = report.world_size;
  for (const std::string& name : options.policies)  // unknown names fail before any work
    DYNAMOE_RETURN_IF_ERROR(MakePolicy(name, cluster, options.default_layer, options.policy).status());
  const int64_t L = static_cast<int64_t>(trace.layers.size());
  std::vector<std::vector<size_t>> by_layer(L);
  for (size_t i = 0; i < trace.steps.size(); ++i) {
    const TraceStep& s = trace.steps[i];
    DYNAMOE_CHECK_ARG(s.layer >= 0 && s.layer < L, "replay: step ", s.step, " names layer ", s.layer, " of ", L);
    // Sums of these counts (loads, re-homed copies) then stay far from overflow.
    DYNAMOE_RETURN_IF_ERROR(CheckCountLimits(s.kept, absl::StrCat("replay: step ", s.step)));
    by_layer[s.layer].push_back(i);
  }

  const size_t P = options.policies.size();
  const int64_t total = report.steps * static_cast<int64_t>(P);
  const int64_t every = std::max<int64_t>(1, total / 100);
  std::atomic<int64_t> done{0};
  std::mutex progress_mu;
  auto tick = [&] {
    const int64_t d = ++done;
    if (options.progress && (d % every == 0 || d == total)) {
      std::lock_guard<std::mutex> lock(progress_mu);
      options.progress(d, total);
    }
  };
  // Every (policy, layer) pair is independent: a pool of one thread per core
  // takes them in turn.
  report.policies.resize(P);
  for (size_t p = 0; p < P; ++p) {
    report.policies[p].policy = options.policies[p];
    report.policies[p].step_seconds.assign(trace.steps.size(), 0.0);
    report.policies[p].step_imbalance_after.assign(trace.steps.size(), 0.0);
    report.policies[p].step_copies.assign(trace.steps.size(), 0);
  }
  report.step_imbalance_before.assign(trace.steps.size(), 0.0);
  std::vector<LayerResult> results(P * L);
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next++) < results.size();) {
      const size_t p = i / L, l = i % L;
      try {  // an exception must not leave a thread (std::terminate)
        results[i] = ReplayLayer(trace, by_layer[l], static_cast<int64_t>(l), options, cluster, options.policies[p],
                                 tick, report.policies[p], p == 0 ? &report.step_imbalance_before : nullptr);
      } catch (const std::bad_alloc&) {
        results[i].status = absl::ResourceExhaustedError(
            absl::StrCat("replay: out of memory replaying layer ", l, " under ", options.policies[p]));
      }
    }
  };
  const size_t wanted = options.threads > 0 ? static_cast<size_t>(options.threads)
                                            : std::max(1u, std::thread::hardware_concurrency());
  const size_t threads = std::min<size_t>(results.size(), wanted);
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();

  const double n = static_cast<double>(report.steps);
  const double before = std::accumulate(report.step_imbalance_before.begin(), report.step_imbalance_before.end(), 0.0);
  for (size_t p = 0; p < P; ++p) {
    PolicyReport& pr = report.policies[p];
    LayerResult sum;
    for (int64_t l = 0; l < L; ++l) {
      const LayerResult& r = results[p * L + l];
      DYNAMOE_RETURN_IF_ERROR(r.status);
      sum.after += r.after, sum.copies += r.copies, sum.bytes += r.bytes;
      sum.plan_changes += r.plan_changes;
    }
    pr.mean_seconds = std::accumulate(pr.step_seconds.begin(), pr.step_seconds.end(), 0.0) / n;
    pr.p99_seconds = P99(pr.step_seconds);
    pr.imbalance_before = before / n, pr.imbalance_after = sum.after / n;
    pr.copies_per_step = sum.copies / n, pr.bytes_per_step = sum.bytes / n;
    pr.plan_changes = sum.plan_changes;
  }
  for (const PolicyReport& p : report.policies)
    if (p.policy == "none")
      for (PolicyReport& q : report.policies) q.speedup_vs_none = q.mean_seconds > 0 ? p.mean_seconds / q.mean_seconds : 0;
  return report;
}

}  // namespace dynamoe::placement
