#include "scheduler/token_exchange.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>

#include "monitor/phases.h"
#include "scheduler/expert_parallel.h"
#include "scheduler/row_order.h"

namespace dynamoe::scheduler {

ExchangePlan MakeExchangePlan(const at::Tensor& kept_matrix, int rank, const placement::Plan& plan) {
  const int64_t P = kept_matrix.size(0), E = kept_matrix.size(1);
  const placement::CountMatrix counts = ToCountMatrix(kept_matrix);
  const auto options = kept_matrix.options().dtype(at::kLong);
  ExchangePlan out;
  out.send_rows.assign(P, 0);
  out.recv_rows.assign(P, 0);
  out.slot_experts = SlotExperts(plan, rank);
  std::vector<int64_t> slot_of(E, -1);
  for (size_t k = 0; k < out.slot_experts.size(); ++k) slot_of[out.slot_experts[k]] = static_cast<int64_t>(k);

  // Send side: this rank's rows are expert-sorted; each expert's block is cut
  // into pieces in holder order, and the pieces are sent destination-major.
  struct Piece {
    int64_t dest, start, rows;
  };
  std::vector<Piece> pieces;
  int64_t offset = 0;
  for (int64_t e = 0; e < E; ++e)
    placement::RoutesOf(plan, rank, e, counts.at(rank, e), [&](int64_t, int64_t, int64_t d, int64_t n) {
      pieces.push_back({d, offset, n});
      offset += n;
      out.send_rows[d] += n;
    });
  std::stable_sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.dest < b.dest; });
  std::vector<int64_t> send_perm;
  send_perm.reserve(offset);
  for (const Piece& p : pieces)
    for (int64_t i = 0; i < p.rows; ++i) send_perm.push_back(p.start + i);
  out.to_dest_major = PermutationTensor(std::move(send_perm));
  out.from_dest_major = InversePermutation(out.to_dest_major);

  // Receive side: arrivals are source-major, each source's pieces in expert
  // order; the experts want them slot-major, sources in rank order.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> by_slot(out.slot_experts.size());
  int64_t arrived = 0;
  placement::ForEachRoute(plan, counts, [&](int64_t s, int64_t e, int64_t d, int64_t n) {
    if (d != rank) return;
    by_slot[slot_of[e]].emplace_back(arrived, n);
    arrived += n;
    out.recv_rows[s] += n;
  });
  out.local_counts = at::zeros({static_cast<int64_t>(by_slot.size())}, options);
  int64_t* local = out.local_counts.data_ptr<int64_t>();
  std::vector<int64_t> recv_perm;
  recv_perm.reserve(arrived);
  for (size_t k = 0; k < by_slot.size(); ++k)
    for (const auto& [start, n] : by_slot[k]) {
      local[k] += n;
      for (int64_t i = 0; i < n; ++i) recv_perm.push_back(start + i);
    }
  out.to_expert_major = PermutationTensor(std::move(recv_perm));
  out.to_source_major = InversePermutation(out.to_expert_major);
  return out;
}

TokenExchange TokenExchange::Local(const at::Tensor& kept_counts) {
  TokenExchange t;
  t.plan_.local_counts = kept_counts;
  return t;
}

TokenExchange TokenExchange::Across(const at::Tensor& kept_matrix, const placement::Plan& plan,
                                    runtime::CommunicatorPtr comm, std::string layer) {
  TokenExchange t;
  t.plan_ = MakeExchangePlan(kept_matrix, comm->rank(), plan);
  t.comm_ = std::move(comm);
  t.layer_ = std::move(layer);
  return t;
}

at::Tensor TokenExchange::Dispatch(const at::Tensor& rows) const {
  if (!comm_) return rows;
  at::Tensor r = PermuteRows(rows, plan_.to_dest_major);
  r = AllToAllRows(r, comm_, plan_.send_rows, plan_.recv_rows,
                   {layer_, monitor::PhaseName(monitor::Phase::kDispatch), false});
  return PermuteRows(r, plan_.to_expert_major);
}

at::Tensor TokenExchange::Combine(const at::Tensor& out_rows) const {
  if (!comm_) return out_rows;
  at::Tensor r = PermuteRows(out_rows, plan_.to_source_major);
  r = AllToAllRows(r, comm_, plan_.recv_rows, plan_.send_rows,
                   {layer_, monitor::PhaseName(monitor::Phase::kCombine), false});
  return PermuteRows(r, plan_.from_dest_major);
}

}  // namespace dynamoe::scheduler
