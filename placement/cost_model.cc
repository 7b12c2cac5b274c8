#include "placement/cost_model.h"

#include <algorithm>

namespace dynamoe::placement {

CostModel::CostModel(ClusterSpec cluster, LayerSpec layer, CostOptions options)
    : cluster_(cluster), layer_(layer), options_(options) {
  row_bytes_ = layer_.RowBytes();
  expert_bytes_ = layer_.ExpertBytes();
  seconds_per_row_ = layer_.ForwardFlopsPerRow() / cluster_.flops;
  row_seconds_intra_ = row_bytes_ / cluster_.intra_node_bw;
  row_seconds_inter_ = row_bytes_ / cluster_.inter_node_bw;
}

StepCost CostModel::Finish(double a2a_one_exchange, int64_t max_rows, double bcast_one_way) const {
  StepCost c;
  c.all_to_all = a2a_one_exchange * Exchanges();
  c.max_rows = max_rows;
  c.compute = static_cast<double>(max_rows) * seconds_per_row_ * ComputeFactor();
  c.broadcast = bcast_one_way;
  c.reduce = options_.training ? bcast_one_way : 0.0;
  c.sequential = c.all_to_all + c.compute + c.broadcast + c.reduce;
  c.overlapped = std::max(c.all_to_all, c.compute) + c.broadcast + c.reduce;
  c.total = options_.overlap ? c.overlapped : c.sequential;
  return c;
}

StepCost CostModel::Predict(const CountMatrix& counts, const Plan& plan) const {
  const int64_t P = counts.world_size;
  std::vector<int64_t> rows(P, 0), link(P * P, 0);
  ForEachRoute(plan, counts, [&](int64_t s, int64_t, int64_t d, int64_t n) {
    rows[d] += n;
    if (d != s) link[s * P + d] += n;
  });
  std::vector<double> send(P, 0.0), recv(P, 0.0), bsend(P, 0.0), brecv(P, 0.0);
  for (int64_t s = 0; s < P; ++s)
    for (int64_t d = 0; d < P; ++d) {
      const int64_t n = link[s * P + d];
      if (n == 0) continue;
      const double t = cluster_.Latency(s, d) + static_cast<double>(n) * RowSeconds(s, d);
      send[s] += t;
      recv[d] += t;
    }
  for (int64_t e = 0; e < plan.num_experts; ++e)
    for (int32_t r : plan.copies[e]) {
      const double t = ExpertSeconds(plan.owner[e], r);
      bsend[plan.owner[e]] += t;
      brecv[r] += t;
    }
  double a2a = 0, bcast = 0;
  for (int64_t r = 0; r < P; ++r) {
    a2a = std::max({a2a, send[r], recv[r]});
    bcast = std::max({bcast, bsend[r], brecv[r]});
  }
  return Finish(a2a, *std::max_element(rows.begin(), rows.end()), bcast);
}

double PipelineSeconds(double exchange, double compute, int64_t stages, double stage_overhead) {
  const double n = static_cast<double>(std::max<int64_t>(1, stages));
  return std::max(exchange, compute) + std::min(exchange, compute) / n + n * stage_overhead;
}

int64_t BestStageCount(double exchange, double compute, double stage_overhead, int64_t max_stages) {
  int64_t best = 1;
  for (int64_t n = 2; n <= max_stages; ++n)
    if (PipelineSeconds(exchange, compute, n, stage_overhead) < PipelineSeconds(exchange, compute, best, stage_overhead))
      best = n;
  return best;
}

}  // namespace dynamoe::placement
