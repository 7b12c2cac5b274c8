#include "replay/replay.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
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
// leaving their rank per exchange (the policy already predicted the time, so
// no second cost-model evaluation is needed).
struct Traffic {
  std::vector<int64_t> rows;
  int64_t off_rank = 0;
};

// loads: counts.ExpertLoads(). An expert without copies puts its load on its
// owner, all but the owner's own rows off their rank: O(experts). A copied
// one follows the plan's quota where it covers the source's rows, else the
// split rule (RoutesOf): O(world) each.
void RouteTotals(const CountMatrix& counts, const std::vector<int64_t>& loads, const Plan& plan, Traffic& t) {
  const int64_t P = counts.world_size, E = counts.num_experts;
  t.rows.assign(P, 0);
  t.off_rank = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (plan.copies[e].empty()) {
      const int32_t d = plan.owner[e];
      t.rows[d] += loads[e];
      t.off_rank += loads[e] - counts.at(d, e);
      continue;
    }
    for (int64_t s = 0; s < P; ++s)
      RoutesOf(plan, s, e, counts.at(s, e), [&](int64_t src, int64_t, int64_t d, int64_t r) {
        t.rows[d] += r;
        t.off_rank += d != src ? r : 0;
      });
  }
}

// Bytes the step moves between ranks: token rows leaving their rank in every
// exchange, plus the copies' weights (and their gradients in training).
double BytesMoved(const Traffic& t, const Plan& plan, const CostModel& model) {
  const double weights = static_cast<double>(plan.TotalCopies()) * model.layer().ExpertBytes() *
                         (model.options().training ? 2.0 : 1.0);
  return static_cast<double>(t.off_rank) * model.layer().RowBytes() * model.Exchanges() + weights;
}

// The plan's broadcast + reduce seconds, as CostModel::Predict has them.
double WeightSeconds(const Plan& plan, const CostModel& model, std::vector<double>& send, std::vector<double>& recv) {
  if (!plan.HasCopies()) return 0;
  send.assign(plan.world_size, 0.0);
  recv.assign(plan.world_size, 0.0);
  for (int64_t e = 0; e < plan.num_experts; ++e)
    for (int32_t r : plan.copies[e]) {
      const double t = model.ExpertSeconds(plan.owner[e], r);
      send[plan.owner[e]] += t;
      recv[r] += t;
    }
  const double one_way = std::max(*std::max_element(send.begin(), send.end()), *std::max_element(recv.begin(), recv.end()));
  return model.options().training ? 2 * one_way : one_way;
}

double P99(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(0.99 * static_cast<double>(v.size())));
  return v[std::max<size_t>(rank, 1) - 1];
}

}  // namespace

namespace {

absl::Status CheckRehome(const CountMatrix& counts, int64_t world_size) {
  DYNAMOE_CHECK_ARG(world_size >= 1 && world_size <= kMaxReplayWorld, "replay: world size must be in [1, ",
                    kMaxReplayWorld, "], got ", world_size);
  DYNAMOE_CHECK_ARG(counts.world_size >= 1, "replay: a count matrix without ranks");
  DYNAMOE_CHECK_ARG(world_size * counts.num_experts <= kMaxMatrixCells, "replay: ", world_size, " ranks x ",
                    counts.num_experts, " experts is over 2^24 count-matrix cells");
  DYNAMOE_CHECK_ARG(counts.num_experts % world_size == 0, "replay: ", counts.num_experts,
                    " experts do not divide over ", world_size,
                    " ranks (expert parallelism needs num_experts to be a multiple of the world size)");
  return absl::OkStatus();
}

// Rehome into `out`, reusing its memory; the counts themselves when the world
// is the recorded one.
absl::StatusOr<const CountMatrix*> RehomeInto(const CountMatrix& counts, int64_t world_size, CountMatrix& out) {
  DYNAMOE_RETURN_IF_ERROR(CheckRehome(counts, world_size));
  if (world_size == counts.world_size) return &counts;
  const int64_t E = counts.num_experts;
  out.world_size = world_size, out.num_experts = E;
  out.counts.resize(world_size * E);
  for (int64_t r = 0; r < world_size; ++r)
    std::copy_n(counts.counts.begin() + (r % counts.world_size) * E, E, out.counts.begin() + r * E);
  return &out;
}

}  // namespace

absl::StatusOr<CountMatrix> Rehome(const CountMatrix& counts, int64_t world_size) {
  CountMatrix out;
  DYNAMOE_ASSIGN_OR_RETURN(const CountMatrix* m, RehomeInto(counts, world_size, out));
  return m == &counts ? counts : out;
}

LayerSpec ModelledLayer(const TraceLayerSpec& l, const ReplayOptions& options) {
  LayerSpec spec = options.default_layer;
  if (l.d_model > 0 && l.d_hidden > 0)
    spec = LayerSpec{l.d_model, l.d_hidden, l.gated, l.bias, l.bytes_per_element > 0 ? l.bytes_per_element : 2};
  const LayerOverride& o = options.layer;
  if (o.d_model > 0) spec.d_model = o.d_model;
  if (o.d_hidden > 0) spec.d_hidden = o.d_hidden;
  if (o.bytes_per_element > 0) spec.bytes_per_element = o.bytes_per_element;
  if (o.gated) spec.gated = *o.gated;
  return spec;
}

StepCost BalancedCost(const CountMatrix& counts, const CostModel& model) {
  const ClusterSpec& c = model.cluster();
  const int64_t P = counts.world_size, E = counts.num_experts;
  // Per rank the rows it routes; per node its ranks, its ranks that send,
  // their rows. O(world * experts): no world x world table.
  const int64_t nodes = c.NodeOf(P - 1) + 1;
  std::vector<int64_t> routes(P, 0), size(nodes, 0), active(nodes, 0), node_rows(nodes, 0);
  int64_t total = 0, senders = 0;
  for (int64_t s = 0; s < P; ++s) {
    const int64_t* row = counts.counts.data() + s * E;
    routes[s] = std::accumulate(row, row + E, int64_t{0});
    const int64_t n = c.NodeOf(s);
    ++size[n];
    active[n] += routes[s] > 0;
    node_rows[n] += routes[s];
    senders += routes[s] > 0;
    total += routes[s];
  }
  const double rs_in = model.RowSeconds(true), rs_out = model.RowSeconds(false);
  const double lat_in = c.intra_node_latency_s, lat_out = c.inter_node_latency_s, p = static_cast<double>(P);
  double a2a = 0;
  for (int64_t r = 0; r < P; ++r) {
    const int64_t n = c.NodeOf(r);
    const double in_peers = static_cast<double>(size[n] - 1), out_peers = static_cast<double>(P - size[n]);
    // r sends routes[r] / P rows to every other rank ...
    const double share = static_cast<double>(routes[r]) / p;
    const double send =
        routes[r] > 0 ? in_peers * (lat_in + share * rs_in) + out_peers * (lat_out + share * rs_out) : 0.0;
    // ... and receives 1/P of every other rank's rows.
    const double in_senders = static_cast<double>(active[n] - (routes[r] > 0));
    const double out_senders = static_cast<double>(senders - active[n]);
    const double recv = in_senders * lat_in + out_senders * lat_out +
                        (static_cast<double>(node_rows[n] - routes[r]) * rs_in +
                         static_cast<double>(total - node_rows[n]) * rs_out) / p;
    a2a = std::max({a2a, send, recv});
  }
  return model.Finish(a2a, (total + P - 1) / P, 0.0);
}

namespace {

// Scales one rank's row of cells to `target` rows (largest remainder) given
// the scale's numerator and denominator: cell * num / den, rounded so the
// row sums to target.
void ScaleRow(int64_t* cells, int64_t E, int64_t num, int64_t den, int64_t target, std::vector<int64_t>& order,
              std::vector<int64_t>& rem) {
  int64_t sum = 0;
  rem.assign(E, 0);
  for (int64_t e = 0; e < E; ++e) {
    const __int128 x = static_cast<__int128>(cells[e]) * num;
    cells[e] = static_cast<int64_t>(x / den);
    rem[e] = static_cast<int64_t>(x % den);
    sum += cells[e];
  }
  order.resize(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rem[a] > rem[b]; });
  // The floors lose less than one row per cell with a remainder, so the rows
  // left go to cells that had some (empty cells stay empty).
  for (int64_t i = 0; sum < target && i < E && rem[order[i]] > 0; ++i, ++sum) ++cells[order[i]];
}

}  // namespace

absl::Status RescaleTokensPerRank(Trace& trace, int64_t tokens, int64_t top_k) {
  DYNAMOE_CHECK_ARG(tokens >= 1 && top_k >= 1, "replay: tokens per rank and top-k must be >= 1, got ", tokens,
                    " and ", top_k);
  DYNAMOE_CHECK_ARG(tokens <= kMaxStepTotal / top_k, "replay: ", tokens, " tokens per rank x top-", top_k,
                    " is over 2^40 rows");
  const int64_t rows = tokens * top_k;
  std::vector<int64_t> order, rem;
  for (TraceStep& st : trace.steps) {
    const int64_t P = st.kept.world_size, E = st.kept.num_experts;
    DYNAMOE_CHECK_ARG(top_k <= E, "replay: top-", top_k, " routing needs at least ", top_k,
                      " experts; step ", st.step, " has ", E);
    DYNAMOE_CHECK_ARG(P <= kMaxStepTotal / rows, "replay: step ", st.step, ": ", P, " ranks x ", rows,
                      " rows per rank is over 2^40 rows in one step");
    // Rows per token come from the routed counts (before capacity) where the
    // trace has them, so dropped rows stay dropped in proportion.
    const bool routed = st.routed.counts.size() == st.kept.counts.size();
    for (int64_t r = 0; r < P; ++r) {
      int64_t* kept = st.kept.counts.data() + r * E;
      int64_t* base = routed ? st.routed.counts.data() + r * E : kept;
      const int64_t kept_sum = std::accumulate(kept, kept + E, int64_t{0});
      const int64_t den = std::accumulate(base, base + E, int64_t{0});
      if (den == 0) continue;  // a rank that routed nothing stays empty
      // kept's target: kept_sum * rows / den, rounded half up.
      const int64_t kept_target =
          static_cast<int64_t>((static_cast<__int128>(kept_sum) * rows * 2 + den) / (2 * static_cast<__int128>(den)));
      if (routed) ScaleRow(base, E, rows, den, rows, order, rem);
      if (kept_sum > 0) ScaleRow(kept, E, kept_target, kept_sum, kept_target, order, rem);
      // Rounded apart, a kept cell can pass its routed cell by one row.
      if (routed)
        for (int64_t e = 0; e < E; ++e) kept[e] = std::min(kept[e], base[e]);
    }
  }
  return absl::OkStatus();
}

namespace {

// One name on one layer. Sums are per (name, layer) and combined in layer
// order, so results do not depend on the thread count or the grouping.
struct LayerResult {
  double after = 0, copies = 0, bytes = 0, weights = 0;
  int64_t plan_changes = 0;
  absl::Status status;
};

// A name being replayed on a layer: its policy instance (none for the bound)
// and where its results go.
struct Runner {
  std::unique_ptr<Policy> policy;
  PolicyReport* report = nullptr;
  LayerResult* result = nullptr;
  const std::function<void()>* tick = nullptr;
  Plan last;
  bool has_last = false;
};

// Replays the steps of one layer (indices into trace.steps, in trace order)
// through fresh instances of the named policies (or the bound) in lockstep:
// each step is re-homed and summed once for all of them. Writes each
// report's per-step vectors (and `before`, when given) at those indices.
absl::Status ReplayLayer(const Trace& trace, const std::vector<size_t>& steps, int64_t layer,
                         const ReplayOptions& options, const ClusterSpec& cluster, std::vector<Runner>& runners,
                         std::vector<double>* before) {
  const TraceLayerSpec& l = trace.layers[layer];
  const LayerSpec spec = ModelledLayer(l, options);
  PolicyOptions po = options.policy;
  po.layer = l.name;
  for (Runner& r : runners)
    if (r.report->policy != kBalancedBound) {
      auto made = MakePolicy(r.report->policy, cluster, spec, po);
      if (!made.ok()) return made.status();
      r.policy = *std::move(made);
    }
  const CostModel model(cluster, spec, po.cost);
  const double P = static_cast<double>(cluster.world_size);
  CountMatrix rehomed;
  std::vector<int64_t> loads;
  std::vector<double> send, recv;
  Traffic traffic;
  for (size_t i : steps) {
    DYNAMOE_ASSIGN_OR_RETURN(const CountMatrix* counts, RehomeInto(trace.steps[i].kept, cluster.world_size, rehomed));
    const int64_t E = counts->num_experts;
    loads.assign(E, 0);
    for (int64_t r = 0; r < counts->world_size; ++r) {
      const int64_t* row = counts->counts.data() + r * E;
      for (int64_t e = 0; e < E; ++e) loads[e] += row[e];
    }
    if (before) (*before)[i] = LoadImbalance(loads);
    const double total = std::accumulate(loads.begin(), loads.end(), 0.0);
    for (Runner& run : runners) {
      PolicyReport& pr = *run.report;
      LayerResult& out = *run.result;
      if (!run.policy) {  // the bound
        const StepCost c = BalancedCost(*counts, model);
        pr.step_seconds[i] = c.total;
        pr.step_imbalance_after[i] = total > 0 ? static_cast<double>(c.max_rows) / (total / P) : 0.0;
        out.after += pr.step_imbalance_after[i];
        // Every rank keeps 1/P of its rows and sends the rest.
        out.bytes += total * (P - 1) / P * spec.RowBytes() * model.Exchanges();
        (*run.tick)();
        continue;
      }
      auto plan = run.policy->Step(*counts);
      if (!plan.ok()) return plan.status();
      // Every policy predicts its plan on the counts it was given.
      pr.step_seconds[i] = plan->predicted_step_seconds;
      RouteTotals(*counts, loads, *plan, traffic);
      pr.step_imbalance_after[i] = LoadImbalance(traffic.rows);
      pr.step_copies[i] = static_cast<int32_t>(plan->TotalCopies());
      out.after += pr.step_imbalance_after[i];
      out.copies += pr.step_copies[i];
      out.bytes += BytesMoved(traffic, *plan, run.policy->model());
      out.weights += WeightSeconds(*plan, run.policy->model(), send, recv);
      if (run.has_last && !SamePlan(*plan, run.last)) ++out.plan_changes;
      run.last = std::move(*plan);
      run.has_last = true;
      (*run.tick)();
    }
  }
  return absl::OkStatus();
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
  // What runs: the listed names, then none and the bound where not listed
  // (the speed-up and the bound's share need them). Unknown names fail before
  // any work.
  std::vector<std::string> run;
  for (const std::string& name : options.policies) {
    if (name != kBalancedBound)
      DYNAMOE_RETURN_IF_ERROR(MakePolicy(name, cluster, options.default_layer, options.policy).status());
    DYNAMOE_CHECK_ARG(std::find(run.begin(), run.end(), name) == run.end(), "replay: policy \"", name,
                      "\" is listed twice");
    run.push_back(name);
  }
  const size_t listed = run.size();
  for (const char* name : {"none", kBalancedBound})
    if (std::find(run.begin(), run.end(), name) == run.end()) run.push_back(name);
  const int64_t L = static_cast<int64_t>(trace.layers.size());
  std::vector<std::vector<size_t>> by_layer(L);
  for (size_t i = 0; i < trace.steps.size(); ++i) {
    const TraceStep& s = trace.steps[i];
    DYNAMOE_CHECK_ARG(s.layer >= 0 && s.layer < L, "replay: step ", s.step, " names layer ", s.layer, " of ", L);
    // Sums of these counts (loads, re-homed copies) then stay far from overflow.
    DYNAMOE_RETURN_IF_ERROR(CheckCountLimits(s.kept, absl::StrCat("replay: step ", s.step)));
    by_layer[s.layer].push_back(i);
  }
  for (int64_t l = 0; l < L; ++l) {
    const LayerSpec spec = ModelledLayer(trace.layers[l], options);
    DYNAMOE_CHECK_ARG(spec.d_model > 0 && spec.d_hidden >= 0 && spec.bytes_per_element > 0, "replay: layer ",
                      trace.layers[l].name, " has d_model ", spec.d_model, ", d_hidden ", spec.d_hidden,
                      ", bytes per element ", spec.bytes_per_element, "; expected d_model > 0, d_hidden >= 0, bytes > 0");
  }

  const size_t P = run.size();
  // Progress counts the listed names' steps; the extra ones ride along.
  const int64_t total = report.steps * static_cast<int64_t>(listed);
  const int64_t every = std::max<int64_t>(1, total / 100);
  std::atomic<int64_t> done{0};
  std::mutex progress_mu;
  auto tick_listed = [&] {
    const int64_t d = ++done;
    if (options.progress && (d % every == 0 || d == total)) {
      std::lock_guard<std::mutex> lock(progress_mu);
      options.progress(d, total);
    }
  };
  const std::function<void()> tick = tick_listed, quiet = [] {};
  std::vector<PolicyReport> reports(P);
  for (size_t p = 0; p < P; ++p) {
    reports[p].policy = run[p];
    reports[p].step_seconds.assign(trace.steps.size(), 0.0);
    reports[p].step_imbalance_after.assign(trace.steps.size(), 0.0);
    reports[p].step_copies.assign(trace.steps.size(), 0);
  }
  report.step_imbalance_before.assign(trace.steps.size(), 0.0);
  // Work items: with layers enough to keep every thread busy, one per layer
  // running all names in lockstep (a step is re-homed and summed once);
  // otherwise one per (name, layer), the bound's (cheap) last.
  const size_t wanted = options.threads > 0 ? static_cast<size_t>(options.threads)
                                            : std::max(1u, std::thread::hardware_concurrency());
  const size_t bound = std::find(run.begin(), run.end(), kBalancedBound) - run.begin();
  std::vector<std::vector<size_t>> groups;  // names of each item, by index into run
  if (static_cast<size_t>(L) >= 2 * wanted) {
    groups.emplace_back();
    for (size_t p = 0; p < P; ++p) groups.back().push_back(p);
  } else {
    for (size_t p = 0; p < P; ++p)
      if (p != bound) groups.push_back({p});
    groups.push_back({bound});
  }
  std::vector<LayerResult> results(P * L);
  const size_t items = groups.size() * L;
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next++) < items;) {
      const std::vector<size_t>& group = groups[i / L];
      const size_t l = i % L;
      std::vector<Runner> runners(group.size());
      bool fills_before = false;
      for (size_t k = 0; k < group.size(); ++k) {
        runners[k].report = &reports[group[k]];
        runners[k].result = &results[group[k] * L + l];
        runners[k].tick = group[k] < listed ? &tick : &quiet;
        fills_before |= group[k] == bound;
      }
      absl::Status st;
      try {  // an exception must not leave a thread (std::terminate)
        st = ReplayLayer(trace, by_layer[l], static_cast<int64_t>(l), options, cluster, runners,
                         fills_before ? &report.step_imbalance_before : nullptr);
      } catch (const std::bad_alloc&) {
        st = absl::ResourceExhaustedError(absl::StrCat("replay: out of memory replaying layer ", l));
      }
      if (!st.ok()) results[group[0] * L + l].status = st;
    }
  };
  const size_t threads = std::min<size_t>(items, wanted);
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();

  const double n = static_cast<double>(report.steps);
  const double before = std::accumulate(report.step_imbalance_before.begin(), report.step_imbalance_before.end(), 0.0);
  for (size_t p = 0; p < P; ++p) {
    PolicyReport& pr = reports[p];
    LayerResult sum;
    for (int64_t l = 0; l < L; ++l) {
      const LayerResult& r = results[p * L + l];
      DYNAMOE_RETURN_IF_ERROR(r.status);
      sum.after += r.after, sum.copies += r.copies, sum.bytes += r.bytes, sum.weights += r.weights;
      sum.plan_changes += r.plan_changes;
    }
    pr.mean_seconds = std::accumulate(pr.step_seconds.begin(), pr.step_seconds.end(), 0.0) / n;
    pr.p99_seconds = P99(pr.step_seconds);
    pr.imbalance_before = before / n, pr.imbalance_after = sum.after / n;
    pr.copies_per_step = sum.copies / n, pr.bytes_per_step = sum.bytes / n, pr.weight_seconds = sum.weights / n;
    pr.plan_changes = sum.plan_changes;
  }
  report.none_mean_seconds = reports[std::find(run.begin(), run.end(), "none") - run.begin()].mean_seconds;
  report.balanced_mean_seconds = reports[bound].mean_seconds;
  const double gain = report.none_mean_seconds - report.balanced_mean_seconds;
  for (PolicyReport& q : reports) {
    q.speedup_vs_none = q.mean_seconds > 0 ? report.none_mean_seconds / q.mean_seconds : 0;
    q.bound_fraction = gain > 1e-9 * report.none_mean_seconds ? (report.none_mean_seconds - q.mean_seconds) / gain
                                                               : std::numeric_limits<double>::quiet_NaN();
  }
  reports.resize(listed);
  report.policies = std::move(reports);
  return report;
}

}  // namespace dynamoe::placement
