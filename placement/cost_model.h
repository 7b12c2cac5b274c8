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

}  // namespace dynamoe::placement
