// Offline replay of recorded routing through placement policies: the engine
// under dynamoe-replay (issue 9). Each layer of the trace gets its own policy
// instance per policy name; every step's count matrix (re-homed to the
// replayed world size) goes through Policy::Step and CostModel::Predict.
// Deterministic: no clock, no randomness.
//
// Besides the policies, "balanced" is the force-balanced bound (issue 23):
// every rank computes the mean rows (ceil(total / world)), no weights move,
// and the tokens move as a perfectly balanced router would send them: each
// rank's rows spread evenly over all ranks (fractional rows; a latency per
// peer it sends to). No plan can put fewer rows on its busiest rank; a plan
// can beat the bound's exchange only by keeping rows on their rank, which
// needs copies, whose weights it then pays for.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "placement/policy.h"
#include "placement/trace.h"

namespace dynamoe::placement {

// The largest replayed world: the cost model keeps rank x rank link tables
// per policy and layer being replayed.
constexpr int64_t kMaxReplayWorld = 4096;

// The names Replay accepts: the policies of MakePolicy and the bound.
constexpr char kBalancedBound[] = "balanced";

// Fields of the modelled layer that replace the recorded (or default) ones
// in every layer: 0 / unset keeps that field.
struct LayerOverride {
  int64_t d_model = 0, d_hidden = 0, bytes_per_element = 0;
  std::optional<bool> gated;
  bool any() const { return d_model > 0 || d_hidden > 0 || bytes_per_element > 0 || gated.has_value(); }
};

struct ReplayOptions {
  // Reported in this order. `none` is replayed whether listed or not (the
  // speed-up is against it) and so is `balanced` (the bound's gain).
  std::vector<std::string> policies = {"none", "fastermoe", "adaptive", "eplb", kBalancedBound};
  int64_t world_size = 0;  // the replayed world; 0 keeps the trace's
  ClusterSpec cluster;     // links and compute (its world_size is set from world_size)
  PolicyOptions policy;
  // Sizes for layers the trace does not give (imported CSV/JSONL): d_model,
  // d_hidden, bf16.
  LayerSpec default_layer{1024, 4096, false, false, 2};
  LayerOverride layer;
  // Worker threads over the (policy, layer) pairs; 0: one per core. Results
  // do not depend on it.
  int64_t threads = 0;
  // Called about every 1% of (steps x policies) replayed, and at the end.
  std::function<void(int64_t done, int64_t total)> progress;
};

struct PolicyReport {
  std::string policy;
  // Per replayed layer-step, in trace order: predicted seconds, max/mean
  // rows per rank under the plan, and the plan's copies.
  std::vector<double> step_seconds;
  std::vector<double> step_imbalance_after;
  std::vector<int32_t> step_copies;
  double mean_seconds = 0, p99_seconds = 0;
  double speedup_vs_none = 0;    // none's mean / this mean (none is always replayed)
  // (none's mean - this mean) / (none's mean - balanced's mean): the share of
  // the bound's gain this policy reaches; NaN when the bound gains nothing
  // (none's mean within 1e-9 of the bound's, relative).
  double bound_fraction = 0;
  double imbalance_before = 0;   // mean over steps of max/mean expert load
  double imbalance_after = 0;    // mean over steps of max/mean rows computed per rank under the plan
  double copies_per_step = 0;    // mean of the plan's copies (beyond owners)
  double weight_seconds = 0;     // mean of the plan's predicted weight traffic: copies' broadcast (+ gradient
                                 // reduce in training), the cost model's terms
  double bytes_per_step = 0;     // token rows leaving their rank (every exchange of the step) plus copied weights
                                 // (broadcast, and the gradient reduce in training)
  int64_t plan_changes = 0;      // steps whose plan differs from the layer's previous one
};

struct ReplayReport {
  int64_t world_size = 0;
  int64_t steps = 0;  // layer-steps (trace.steps)
  double none_mean_seconds = 0, balanced_mean_seconds = 0;  // listed or not
  std::vector<double> step_imbalance_before;  // per layer-step: max/mean expert load (policy-independent)
  std::vector<PolicyReport> policies;
};

// The counts of a trace recorded on counts.world_size ranks, as `world_size`
// ranks would route them when each keeps its per-rank batch (data-parallel
// scaling): new rank r routes like recorded rank r mod P. Experts are homed
// as expert parallelism homes them, so num_experts must be a multiple of
// world_size: InvalidArgument naming both otherwise.
absl::StatusOr<CountMatrix> Rehome(const CountMatrix& counts, int64_t world_size);

// The layer a replay models for trace layer `layer`: the recorded sizes (or
// options.default_layer where the trace has none), then options.layer's fields.
LayerSpec ModelledLayer(const TraceLayerSpec& layer, const ReplayOptions& options);

// The bound's prediction for one step (see the top of this file); counts
// already re-homed to model.cluster().world_size.
StepCost BalancedCost(const CountMatrix& counts, const CostModel& model);

// Rescales every step to `tokens` tokens per rank of top-`top_k` routing:
// rank r's routed rows become tokens x top_k and each of its kept and routed
// cells is scaled by tokens x top_k / (r's routed rows), in integers (largest
// remainder: the floors, then one more row to the cells with the largest
// remainders, ties to the lower expert), so each rank keeps its distribution
// over the experts and its share of dropped rows. A rank that routed nothing
// stays empty. Plans recorded in the trace are kept (their quotas then cover
// other counts and are not followed). InvalidArgument when tokens x top_k x
// world is over the count limits of trace.h, or tokens < 1, top_k < 1.
absl::Status RescaleTokensPerRank(Trace& trace, int64_t tokens, int64_t top_k);

// InvalidArgument for an unknown policy name (other than "balanced"), an empty trace, a world size
// outside [1, kMaxReplayWorld], counts over the limits of trace.h or that do
// not fit the world size; the message names what was expected.
// ResourceExhausted when memory runs out.
absl::StatusOr<ReplayReport> Replay(const Trace& trace, const ReplayOptions& options);

}  // namespace dynamoe::placement
