// A robust running fit of the cost model's rates from measured step times
// (DYNAMOE_CALIBRATE=online, and dynamoe-replay calibrate over a trace).
//
// The measured forward of one rank, phase by phase, is modelled as
//   experts   = a * rows_r + b                       (a: seconds per row)
//   exchange  = link . beta + a * (max_rows - rows_r) (dispatch + combine +
//               shadow_broadcast; the second term is the combine waiting for
//               the slowest rank's experts)
//   total     = fixed + a * max_rows + link . beta   (the same on every rank)
// where link = [messages intra, messages inter, bytes intra, bytes inter] of
// the bottleneck rank's side (the cost model's max(send, receive), chosen
// under the current rates) of the two token exchanges plus that of the
// copies' weight broadcast, and
// beta = [latency intra, latency inter, 1 / bw intra, 1 / bw inter, c] with c
// a per-step constant of the exchange. fixed absorbs every per-step constant
// (gate, count all-gather, policy, the experts' b and the exchange's c).
//
// Fits, over the last `window_steps` steps: a and b by least relative
// absolute error (iteratively reweighted least squares; median-like, so a
// preempted step or a straggling peer does not drag the line), beta the same
// way on the median over ranks of the exchange target, fixed as the median
// residual of the totals. A link column the window does not identify (always
// zero, or collinear with an earlier column, e.g. one message per exchange at
// 2 ranks) keeps the prior's rate; negative rates do too. Pure arithmetic on
// the inputs in a fixed order: the same inputs give bitwise the same fit, so
// ranks that feed it the same all-gathered figures agree.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "placement/count_matrix.h"
#include "placement/plan.h"
#include "placement/spec.h"

namespace dynamoe::placement {

// One rank's measured forward of a step, seconds.
struct RankTimes {
  double experts = 0;   // the experts phase
  double exchange = 0;  // dispatch + combine + shadow_broadcast
  double total = 0;     // all phases
  double wait = 0;      // of total, the count all-gather
};
// From phase seconds named as the monitor names them (monitor/phases.h).
RankTimes TimesFromPhases(const std::vector<std::string>& names, const double* seconds);

struct FittedRates {
  double seconds_per_row = 0;  // forward expert seconds per row on one rank
  double expert_fixed_s = 0;   // the experts phase's per-step constant (b)
  double intra_node_latency_s = 0, inter_node_latency_s = 0;  // per message
  double intra_node_bw = 0, inter_node_bw = 0;                // bytes/s
  double fixed_s = 0;  // per-step constant of the forward (all phases); a residual, negative when the other terms over-predict
  // Which of latency intra/inter, bw intra/inter the window identified (the others are the prior's).
  std::array<bool, 4> fitted{};
};

struct OnlineFitOptions {
  int64_t window_steps = 64;
  int64_t min_steps = 8;          // steps in the window before ready()
  int64_t max_ranks_per_step = 16;  // ranks' times kept per step (evenly spaced), bounding the fit's cost
};

class OnlineFit {
 public:
  // prior: the configured cluster (its world size and nodes, and the rates
  // used until the data identify them).
  OnlineFit(ClusterSpec prior, LayerSpec layer, OnlineFitOptions options = {});

  // Adds one step: its count matrix, the plan that ran (quotas included) and
  // measured times of some ranks (rank, times), ranks ascending. Predicts the
  // step with the fit so far first (errors()), then refits.
  void Add(const CountMatrix& counts, const Plan& plan, const std::vector<std::pair<int64_t, RankTimes>>& measured);

  bool ready() const { return static_cast<int64_t>(window_.size()) >= options_.min_steps; }
  int64_t steps() const { return added_; }
  const FittedRates& rates() const { return rates_; }
  // The prior with the fitted rates (flops from seconds_per_row).
  ClusterSpec Cluster() const;
  // Predicted forward seconds of a step (every rank's), and of one rank's experts and exchange phases.
  double PredictStep(const CountMatrix& counts, const Plan& plan) const;
  double PredictExperts(const CountMatrix& counts, const Plan& plan, int64_t rank) const;
  double PredictExchange(const CountMatrix& counts, const Plan& plan, int64_t rank) const;
  // |predicted - measured| / measured of the step total, per step added once
  // ready (median over the measured ranks), predicted before the step joined
  // the fit; the last window_steps of them.
  const std::deque<double>& errors() const { return errors_; }
  double MedianError() const;  // of errors(); -1 when there are none

 private:
  using Side = std::array<double, 4>;  // messages intra/inter, bytes intra/inter
  struct Shape {  // what the fit reads of a step's counts and plan
    // [2P]: each rank's send then receive side of one token exchange, and of
    // the copies' weight broadcast; the bottleneck is chosen under the
    // current rates at every refit.
    std::vector<Side> tokens, weights;
    std::vector<int64_t> rows;  // [P] rows each rank computes
    int64_t max_rows = 0;
  };
  struct Step {
    Shape shape;
    std::vector<std::pair<int64_t, RankTimes>> measured;
  };
  Shape ShapeOf(const CountMatrix& counts, const Plan& plan) const;
  double Link(const Side& side) const;
  // The forward's link features: two token exchanges' and the broadcast's bottleneck sides.
  Side LinkOf(const Shape& shape) const;
  void Refit();

  ClusterSpec prior_;
  LayerSpec layer_;
  OnlineFitOptions options_;
  std::deque<Step> window_;
  std::deque<double> errors_;
  int64_t added_ = 0;
  FittedRates rates_;
  double exchange_c_ = 0;  // the exchange's per-step constant (its fit's last column)
};

// Median of v (the upper one for even sizes); 0 when empty.
double MedianOf(std::vector<double> v);

}  // namespace dynamoe::placement
