// Predicts one training (or inference) step of an MoE layer under a plan.
//
// Terms, each the slowest rank's time (ranks wait for each other at every
// collective):
//   all_to_all  Each token exchange costs, per rank, max(send, receive) where
//               send = sum over peers with rows > 0 of latency + rows * row_bytes
//               / bandwidth(link) (intra- or inter-node), and receive likewise;
//               rows kept on the rank cost nothing. Training has four exchanges
//               (dispatch and combine, forward and backward), inference two.
//   compute     rows computed on the rank * forward FLOP per row / flops, times
//               3 in training (backward = two GEMMs per forward GEMM).
//   broadcast   Copies' weights from owners: per rank max(send, receive) with
//               send = sum over the copies it owns of latency + expert_bytes /
//               bandwidth(owner, holder).
//   reduce      The copies' gradients back to the owner: same volume as the
//               broadcast, training only.
// sequential = all_to_all + compute + broadcast + reduce.
// overlapped = max(all_to_all, compute) + broadcast + reduce: the chunked
//   schedule hides the shorter of exchange and compute; the broadcast must
//   finish before the experts run and the reduce after their backward.
// Not modelled: the count all-gather and the gate (the same for every plan).
#pragma once

#include <vector>

#include "placement/count_matrix.h"
#include "placement/plan.h"
#include "placement/spec.h"

namespace dynamoe::placement {

struct CostOptions {
  bool training = true;
  bool overlap = false;  // DYNAMOE_SCHEDULE=overlap
};

struct StepCost {
  double all_to_all = 0, compute = 0, broadcast = 0, reduce = 0;
  double sequential = 0, overlapped = 0;
  double total = 0;  // overlapped or sequential, per CostOptions::overlap
  int64_t max_rows = 0;  // most rows computed by one rank
};

// The overlapped schedule run as `stages` pipeline stages: one stage's worth
// of the shorter of exchange and compute is not hidden (pipeline fill and
// drain), and every stage adds a fixed overhead (two collectives' latency):
//   max(x, c) + min(x, c) / stages + stages * stage_overhead.
double PipelineSeconds(double exchange, double compute, int64_t stages, double stage_overhead);
// The stage count in [1, max_stages] that minimises PipelineSeconds.
int64_t BestStageCount(double exchange, double compute, double stage_overhead, int64_t max_stages);

class CostModel {
 public:
  CostModel(ClusterSpec cluster, LayerSpec layer, CostOptions options = {});

  // Reference evaluation: O(world * experts + world^2).
  StepCost Predict(const CountMatrix& counts, const Plan& plan) const;

  const ClusterSpec& cluster() const { return cluster_; }
  const LayerSpec& layer() const { return layer_; }
  const CostOptions& options() const { return options_; }
  double Exchanges() const { return options_.training ? 4.0 : 2.0; }
  double ComputeFactor() const { return options_.training ? 3.0 : 1.0; }
  // Seconds for `rows` token rows on a link / one expert's weights on a link.
  double RowSeconds(bool same_node) const { return same_node ? row_seconds_intra_ : row_seconds_inter_; }
  double RowSeconds(int64_t from, int64_t to) const { return RowSeconds(cluster_.SameNode(from, to)); }
  double ExpertSeconds(int64_t from, int64_t to) const {
    return cluster_.Latency(from, to) + expert_bytes_ / cluster_.Bandwidth(from, to);
  }
  double SecondsPerRow() const { return seconds_per_row_; }
  // Combines the per-term maxima into a StepCost.
  StepCost Finish(double a2a_one_exchange, int64_t max_rows, double bcast_one_way) const;

 private:
  ClusterSpec cluster_;
  LayerSpec layer_;
  CostOptions options_;
  double row_bytes_, expert_bytes_, seconds_per_row_, row_seconds_intra_, row_seconds_inter_;
};

// The per-rank terms of the cost model kept up to date under edits of a plan,
// so a policy can try an action in O(world * holders) and score it in
// O(world). Evaluate() equals CostModel::Predict on the same plan (up to
// floating-point summation order); the tests check it.
class LoadState {
 public:
  // One pass over the counts (plain expert parallelism), then the plan's copies as edits.
  LoadState(const CostModel& model, const CountMatrix& counts, Plan plan);

  const Plan& plan() const { return plan_; }
  double Evaluate() const { return Cost().total; }
  StepCost Cost() const { return Totals(false); }
  // Copy `expert` onto `rank` / remove that copy; rank must (not) hold it.
  void AddCopy(int64_t expert, int64_t rank);
  void RemoveCopy(int64_t expert, int64_t rank);
  // Replaces the copies of `expert` (ascending ranks, owner excluded).
  void SetCopies(int64_t expert, std::vector<int32_t> copies);
  // Copies onto every rank that lacks it.
  void Shadow(int64_t expert);
  // The predicted total if `expert` had these copies instead, without
  // changing the state: one pass over the ranks, no allocation.
  double Try(int64_t expert, const std::vector<int32_t>& copies);
  int64_t RowsOn(int64_t rank) const { return rows_[rank]; }
  // [P] rows computed per rank.
  const std::vector<int64_t>& rows() const { return rows_; }
  // Rows that leave their source rank in one exchange.
  int64_t OffRankRows() const { return off_rank_rows_; }
  // Rank with the most rows (the compute bottleneck); lowest index on ties.
  int64_t BusiestRank() const;
  // Least-loaded rank not holding `expert`, or -1.
  int64_t IdlestNonHolder(int64_t expert) const;
  // Non-holder sending the most rows of `expert`, or -1.
  int64_t TopNonHolderSender(int64_t expert) const;
  // Copies held on `rank` (for memory budgets).
  int64_t CopiesOn(int64_t rank) const { return copies_on_[rank]; }
  // Tokens per expert over all ranks (CountMatrix::ExpertLoads, from the same pass).
  const std::vector<int64_t>& expert_loads() const { return loads_; }

 private:
  void ApplyRoutes(int64_t expert, int64_t sign);
  void ApplyLink(int64_t from, int64_t to, int64_t rows);
  // The state's cost, with Try's deltas added when with_trial.
  StepCost Totals(bool with_trial) const;
  // Seconds of `rows` more on a link that had `before` rows (latency when it turns on or off).
  double LinkDelta(int64_t from, int64_t to, int64_t before, int64_t rows) const {
    const bool same = node_[from] == node_[to];
    double t = static_cast<double>(rows) * (same ? row_intra_ : row_inter_);
    const bool was_on = before > 0, is_on = before + rows > 0;
    if (was_on != is_on) t += (is_on ? 1.0 : -1.0) * (same ? lat_intra_ : lat_inter_);
    return t;
  }
  void ApplyBroadcast(int64_t expert, int64_t rank, int64_t sign);

  const CostModel& model_;
  const CountMatrix& counts_;
  Plan plan_;
  int64_t P_;
  std::vector<int64_t> rows_;       // [P] rows computed per rank
  std::vector<int64_t> link_rows_;  // [P * P] rows from -> to (to != from)
  int64_t off_rank_rows_ = 0;       // sum of link_rows_
  std::vector<double> send_, recv_;            // [P] one exchange, seconds
  std::vector<double> bcast_send_, bcast_recv_; // [P] seconds
  std::vector<int64_t> copies_on_;
  std::vector<int64_t> loads_;
  std::vector<char> holder_;  // scratch: ranks holding the expert being edited
  std::vector<int32_t> node_;  // node of each rank
  double row_intra_, row_inter_, lat_intra_, lat_inter_;
  // Try's scratch.
  std::vector<char> new_holder_;
  std::vector<double> d_send_, d_recv_, d_bsend_, d_brecv_;
  std::vector<int64_t> d_rows_, d_link_;
  std::vector<int32_t> touched_;
};

}  // namespace dynamoe::placement
