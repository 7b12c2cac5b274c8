// An independent reference for the policies' predicted step time: the cost
// formula as README / placement/cost_model.h's header document it, written as
// plain loops over per-rank tallies. It shares no code with CostModel or
// LoadState (not even the split rule's helpers), only the plain data types.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "placement/plan.h"
#include "placement/spec.h"

namespace dynamoe::placement {

struct ReferenceCost {
  double all_to_all = 0, compute = 0, broadcast = 0, reduce = 0, total = 0;
};

// counts: [P * E] row-major (source rank, expert).
inline ReferenceCost ReferenceStep(const ClusterSpec& c, const LayerSpec& l, bool training, bool overlap,
                                   const std::vector<int64_t>& counts, const Plan& plan) {
  const int64_t P = plan.world_size, E = plan.num_experts;
  // Sizes from spec.h's documentation: a row is d_model elements; an expert
  // has 2 (3 gated) d_model x d_hidden matrices plus biases; a row costs one
  // multiply-add (2 FLOP) per weight of the matrices.
  const double bpe = static_cast<double>(l.bytes_per_element);
  const double matrices = l.gated ? 3.0 : 2.0;
  const double row_bytes = static_cast<double>(l.d_model) * bpe;
  const double expert_bytes =
      (matrices * l.d_model * l.d_hidden + (l.bias ? l.d_model + l.d_hidden : 0)) * bpe;
  const double flops_per_row = 2.0 * matrices * l.d_model * l.d_hidden;
  auto node = [&](int64_t r) { return c.ranks_per_node > 0 ? r / c.ranks_per_node : int64_t{0}; };
  auto bw = [&](int64_t a, int64_t b) { return node(a) == node(b) ? c.intra_node_bw : c.inter_node_bw; };
  auto lat = [&](int64_t a, int64_t b) {
    return node(a) == node(b) ? c.intra_node_latency_s : c.inter_node_latency_s;
  };

  // A quota (plan.h) that covers the source's rows says where they go.
  // Otherwise the split rule: a holder keeps its rows; any other source gives
  // holder i (owner first, then copies ascending) floor(rows / n) rows, plus
  // one of the remainder when (i - source) mod n < rows mod n.
  std::vector<int64_t> rows(P, 0), link(P * P, 0);
  for (int64_t s = 0; s < P; ++s)
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n_rows = counts[s * E + e];
      if (!plan.quotas.empty() && !plan.quotas[e].start.empty() && n_rows > 0) {
        const auto& q = plan.quotas[e];
        int64_t covered = 0;
        for (int32_t k = q.start[s]; k < q.start[s + 1]; ++k) covered += q.rows[k];
        if (covered == n_rows) {
          for (int32_t k = q.start[s]; k < q.start[s + 1]; ++k) {
            rows[q.dest[k]] += q.rows[k];
            if (q.dest[k] != s) link[s * P + q.dest[k]] += q.rows[k];
          }
          continue;
        }
      }
      std::vector<int64_t> holders = {plan.owner[e]};
      for (int32_t r : plan.copies[e]) holders.push_back(r);
      if (std::find(holders.begin(), holders.end(), s) != holders.end()) {
        rows[s] += n_rows;
        continue;
      }
      const int64_t n = static_cast<int64_t>(holders.size());
      for (int64_t i = 0; i < n; ++i) {
        const int64_t share = n_rows / n + ((((i - s) % n) + n) % n < n_rows % n ? 1 : 0);
        rows[holders[i]] += share;
        link[s * P + holders[i]] += share;
      }
    }
  // One exchange: per rank max(send, receive), each link with rows costing
  // latency + rows * row_bytes / bandwidth; the slowest rank sets the time.
  std::vector<double> send(P, 0), recv(P, 0), bsend(P, 0), brecv(P, 0);
  for (int64_t s = 0; s < P; ++s)
    for (int64_t d = 0; d < P; ++d)
      if (link[s * P + d] > 0) {
        const double t = lat(s, d) + static_cast<double>(link[s * P + d]) * row_bytes / bw(s, d);
        send[s] += t;
        recv[d] += t;
      }
  // The copies' weights, owner to holder: latency + expert_bytes / bandwidth each.
  for (int64_t e = 0; e < E; ++e)
    for (int32_t r : plan.copies[e]) {
      const double t = lat(plan.owner[e], r) + expert_bytes / bw(plan.owner[e], r);
      bsend[plan.owner[e]] += t;
      brecv[r] += t;
    }
  double one_exchange = 0, bcast = 0;
  int64_t max_rows = 0;
  for (int64_t r = 0; r < P; ++r) {
    one_exchange = std::max({one_exchange, send[r], recv[r]});
    bcast = std::max({bcast, bsend[r], brecv[r]});
    max_rows = std::max(max_rows, rows[r]);
  }
  ReferenceCost out;
  out.all_to_all = one_exchange * (training ? 4 : 2);  // dispatch + combine, forward (+ backward)
  out.compute = static_cast<double>(max_rows) * flops_per_row / c.flops * (training ? 3 : 1);
  out.broadcast = bcast;
  out.reduce = training ? bcast : 0;
  out.total = (overlap ? std::max(out.all_to_all, out.compute) : out.all_to_all + out.compute) + out.broadcast +
              out.reduce;
  return out;
}

}  // namespace dynamoe::placement
