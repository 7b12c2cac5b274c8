// Offline replay of recorded routing through placement policies: the engine
// under dynamoe-replay (issue 9). Each layer of the trace gets its own policy
// instance per policy name; every step's count matrix (re-homed to the
// replayed world size) goes through Policy::Step and CostModel::Predict.
// Deterministic: no clock, no randomness.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "placement/policy.h"
#include "placement/trace.h"

namespace dynamoe::placement {

// The largest replayed world: the cost model keeps rank x rank link tables
// per policy and layer being replayed.
constexpr int64_t kMaxReplayWorld = 4096;

struct ReplayOptions {
  std::vector<std::string> policies = {"none", "fastermoe", "adaptive", "eplb"};
  int64_t world_size = 0;  // the replayed world; 0 keeps the trace's
  ClusterSpec cluster;     // links and compute (its world_size is set from world_size)
  PolicyOptions policy;
  // Sizes for layers the trace does not give (imported CSV/JSONL): d_model,
  // d_hidden, bf16.
  LayerSpec default_layer{1024, 4096, false, false, 2};
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
  double speedup_vs_none = 0;    // none's mean / this mean; 0 when none was not replayed
  double imbalance_before = 0;   // mean over steps of max/mean expert load
  double imbalance_after = 0;    // mean over steps of max/mean rows computed per rank under the plan
  double copies_per_step = 0;    // mean of the plan's copies (beyond owners)
  double bytes_per_step = 0;     // token rows leaving their rank (every exchange of the step) plus copied weights
                                 // (broadcast, and the gradient reduce in training)
  int64_t plan_changes = 0;      // steps whose plan differs from the layer's previous one
};

struct ReplayReport {
  int64_t world_size = 0;
  int64_t steps = 0;
  std::vector<double> step_imbalance_before;  // per layer-step: max/mean expert load (policy-independent)
  std::vector<PolicyReport> policies;
};

// The counts of a trace recorded on counts.world_size ranks, as `world_size`
// ranks would route them when each keeps its per-rank batch (data-parallel
// scaling): new rank r routes like recorded rank r mod P. Experts are homed
// as expert parallelism homes them, so num_experts must be a multiple of
// world_size: InvalidArgument naming both otherwise.
absl::StatusOr<CountMatrix> Rehome(const CountMatrix& counts, int64_t world_size);

// InvalidArgument for an unknown policy name, an empty trace, a world size
// outside [1, kMaxReplayWorld], counts over the limits of trace.h or that do
// not fit the world size; the message names what was expected.
// ResourceExhausted when memory runs out.
absl::StatusOr<ReplayReport> Replay(const Trace& trace, const ReplayOptions& options);

}  // namespace dynamoe::placement
