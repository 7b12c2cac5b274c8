#include "placement/cost_model.h"

#include <algorithm>
#include <utility>

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

LoadState::LoadState(const CostModel& model, const CountMatrix& counts, Plan plan)
    : model_(model), counts_(counts), plan_(std::move(plan)), P_(counts.world_size) {
  const int64_t E = counts.num_experts;
  rows_.assign(P_, 0);
  link_rows_.assign(P_ * P_, 0);
  send_.assign(P_, 0.0);
  recv_.assign(P_, 0.0);
  bcast_send_.assign(P_, 0.0);
  bcast_recv_.assign(P_, 0.0);
  copies_on_.assign(P_, 0);
  loads_.assign(E, 0);
  node_.resize(P_);
  for (int64_t r = 0; r < P_; ++r) node_[r] = static_cast<int32_t>(model.cluster().NodeOf(r));
  row_intra_ = model.RowSeconds(true);
  row_inter_ = model.RowSeconds(false);
  lat_intra_ = model.cluster().intra_node_latency_s;
  lat_inter_ = model.cluster().inter_node_latency_s;
  // Plain expert parallelism in one pass over the matrix's nonzeros; the
  // links each source uses are collected as they first appear, so sparse
  // counts cost O(nonzeros), not O(world^2).
  const int32_t* owner = plan_.owner.data();
  std::vector<int32_t> used;
  for (int64_t s = 0; s < P_; ++s) {
    const int64_t* row = counts.counts.data() + s * E;
    int64_t* link = link_rows_.data() + s * P_;
    used.clear();
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = row[e];
      if (n == 0) continue;
      const int32_t d = owner[e];
      loads_[e] += n;
      rows_[d] += n;
      if (d == s) continue;  // rows kept on their rank are not link traffic
      if (link[d] == 0) used.push_back(d);
      link[d] += n;
    }
    double sent = 0;  // in a register: send_ and recv_ may alias for the compiler
    for (int32_t d : used) {
      const double t = LinkDelta(s, d, 0, link[d]);
      off_rank_rows_ += link[d];
      sent += t;
      recv_[d] += t;
    }
    send_[s] = sent;
  }
  // ... then the plan's copies as edits.
  for (int64_t e = 0; e < E; ++e) {
    if (plan_.copies[e].empty()) continue;
    // Removes the owner-only routes of the pass (copies and quota hidden), then
    // follows the copies and the quota (if any).
    std::vector<int32_t> copies;
    Quota quota;
    copies.swap(plan_.copies[e]);
    if (!plan_.quotas.empty()) quota = std::exchange(plan_.quotas[e], Quota{});
    ApplyRoutes(e, -1);
    plan_.copies[e] = std::move(copies);
    if (!plan_.quotas.empty()) plan_.quotas[e] = std::move(quota);
    for (int32_t r : plan_.copies[e]) ApplyBroadcast(e, r, +1);
    ApplyRoutes(e, +1);
  }
}

void LoadState::ApplyLink(int64_t from, int64_t to, int64_t rows) {
  int64_t& n = link_rows_[from * P_ + to];
  const double t = LinkDelta(from, to, n, rows);
  n += rows;
  off_rank_rows_ += rows;
  send_[from] += t;
  recv_[to] += t;
}

void LoadState::ApplyRoutes(int64_t expert, int64_t sign) {
  const int64_t E = counts_.num_experts;
  const int64_t* column = counts_.counts.data() + expert;
  const int32_t owner = plan_.owner[expert];
  const auto& copies = plan_.copies[expert];
  if (plan_.HasQuota(expert)) {
    for (int64_t s = 0; s < P_; ++s)
      RoutesOf(plan_, s, expert, column[s * E], [&](int64_t src, int64_t, int64_t dst, int64_t rows) {
        rows_[dst] += sign * rows;
        if (dst != src) ApplyLink(src, dst, sign * rows);
      });
    return;
  }
  if (copies.empty()) {  // plain: everything to the owner
    for (int64_t s = 0; s < P_; ++s) {
      const int64_t n = column[s * E];
      if (n == 0) continue;
      rows_[owner] += sign * n;
      if (s != owner) ApplyLink(s, owner, sign * n);
    }
    return;
  }
  if (static_cast<int64_t>(copies.size()) == P_ - 1) {  // shadowed: everything stays local
    for (int64_t s = 0; s < P_; ++s) rows_[s] += sign * column[s * E];
    return;
  }
  holder_.assign(P_, 0);
  holder_[owner] = 1;
  for (int32_t r : copies) holder_[r] = 1;
  for (int64_t s = 0; s < P_; ++s) {
    const int64_t n = column[s * E];
    if (n == 0) continue;
    if (holder_[s]) {
      rows_[s] += sign * n;
      continue;
    }
    RoutesOf(plan_, s, expert, n, [&](int64_t src, int64_t, int64_t dst, int64_t rows) {
      rows_[dst] += sign * rows;
      ApplyLink(src, dst, sign * rows);
    });
  }
}

void LoadState::ApplyBroadcast(int64_t expert, int64_t rank, int64_t sign) {
  const double t = static_cast<double>(sign) * model_.ExpertSeconds(plan_.owner[expert], rank);
  bcast_send_[plan_.owner[expert]] += t;
  bcast_recv_[rank] += t;
  copies_on_[rank] += sign;
}

void LoadState::SetCopies(int64_t expert, std::vector<int32_t> copies) {
  ApplyRoutes(expert, -1);
  if (plan_.HasQuota(expert)) plan_.quotas[expert] = Quota{};  // the edited expert follows the split rule
  for (int32_t r : plan_.copies[expert]) ApplyBroadcast(expert, r, -1);
  plan_.copies[expert] = std::move(copies);
  for (int32_t r : plan_.copies[expert]) ApplyBroadcast(expert, r, +1);
  ApplyRoutes(expert, +1);
}

void LoadState::AddCopy(int64_t expert, int64_t rank) {
  std::vector<int32_t> c = plan_.copies[expert];
  c.insert(std::upper_bound(c.begin(), c.end(), static_cast<int32_t>(rank)), static_cast<int32_t>(rank));
  SetCopies(expert, std::move(c));
}

void LoadState::RemoveCopy(int64_t expert, int64_t rank) {
  std::vector<int32_t> c = plan_.copies[expert];
  c.erase(std::find(c.begin(), c.end(), static_cast<int32_t>(rank)));
  SetCopies(expert, std::move(c));
}

void LoadState::Shadow(int64_t expert) {
  std::vector<int32_t> c;
  for (int32_t r = 0; r < P_; ++r)
    if (r != plan_.owner[expert]) c.push_back(r);
  SetCopies(expert, std::move(c));
}

double LoadState::Try(int64_t expert, const std::vector<int32_t>& copies) {
  const int64_t E = counts_.num_experts;
  const int64_t* column = counts_.counts.data() + expert;
  const int32_t owner = plan_.owner[expert];
  const std::vector<int32_t>& old_copies = plan_.copies[expert];
  holder_.assign(P_, 0);
  new_holder_.assign(P_, 0);
  holder_[owner] = new_holder_[owner] = 1;
  for (int32_t r : old_copies) holder_[r] = 1;
  for (int32_t r : copies) new_holder_[r] = 1;
  d_send_.assign(P_, 0.0);
  d_recv_.assign(P_, 0.0);
  d_bsend_.assign(P_, 0.0);
  d_brecv_.assign(P_, 0.0);
  d_rows_.assign(P_, 0);
  d_link_.assign(P_, 0);
  for (int32_t r : old_copies) {
    const double t = model_.ExpertSeconds(owner, r);
    d_bsend_[owner] -= t;
    d_brecv_[r] -= t;
  }
  for (int32_t r : copies) {
    const double t = model_.ExpertSeconds(owner, r);
    d_bsend_[owner] += t;
    d_brecv_[r] += t;
  }
  if (old_copies.empty() && static_cast<int64_t>(copies.size()) == P_ - 1) {
    // Fast path for the common first action: shadow a plain expert.
    for (int64_t s = 0; s < P_; ++s) {
      const int64_t n = column[s * E];
      if (n == 0 || s == owner) continue;
      d_rows_[owner] -= n;
      d_rows_[s] += n;
      const double t = LinkDelta(s, owner, link_rows_[s * P_ + owner], -n);
      d_send_[s] += t;
      d_recv_[owner] += t;
    }
    return Totals(true).total;
  }
  for (int64_t s = 0; s < P_; ++s) {
    const int64_t n = column[s * E];
    if (n == 0) continue;
    touched_.clear();
    auto piece = [&](int64_t dst, int64_t rows) {
      d_rows_[dst] += rows;
      if (dst == s) return;
      if (d_link_[dst] == 0) touched_.push_back(static_cast<int32_t>(dst));
      d_link_[dst] += rows;
    };
    RoutesOf(plan_, s, expert, n, [&](int64_t, int64_t, int64_t d, int64_t rows) { piece(d, -rows); });
    SplitRows(owner, copies, new_holder_[s], s, n, piece);
    for (int32_t d : touched_) {
      const int64_t delta = d_link_[d];
      d_link_[d] = 0;
      if (delta == 0) continue;
      const double t = LinkDelta(s, d, link_rows_[s * P_ + d], delta);
      d_send_[s] += t;
      d_recv_[d] += t;
    }
  }
  return Totals(true).total;
}

StepCost LoadState::Totals(bool with_trial) const {
  double a2a = 0, bcast = 0;
  int64_t max_rows = 0;
  for (int64_t r = 0; r < P_; ++r) {
    // Try's deltas on top of the state, or the state alone.
    const double ds = with_trial ? d_send_[r] : 0, dr = with_trial ? d_recv_[r] : 0;
    const double dbs = with_trial ? d_bsend_[r] : 0, dbr = with_trial ? d_brecv_[r] : 0;
    const int64_t drows = with_trial ? d_rows_[r] : 0;
    a2a = std::max({a2a, send_[r] + ds, recv_[r] + dr});
    bcast = std::max({bcast, bcast_send_[r] + dbs, bcast_recv_[r] + dbr});
    max_rows = std::max(max_rows, rows_[r] + drows);
  }
  return model_.Finish(a2a, max_rows, bcast);
}

int64_t LoadState::BusiestRank() const {
  return std::max_element(rows_.begin(), rows_.end()) - rows_.begin();
}

int64_t LoadState::IdlestNonHolder(int64_t expert) const {
  int64_t best = -1;
  for (int64_t r = 0; r < P_; ++r)
    if (!plan_.Holds(r, expert) && (best < 0 || rows_[r] < rows_[best])) best = r;
  return best;
}

int64_t LoadState::TopNonHolderSender(int64_t expert) const {
  int64_t best = -1;
  for (int64_t r = 0; r < P_; ++r)
    if (!plan_.Holds(r, expert) && counts_.at(r, expert) > 0 &&
        (best < 0 || counts_.at(r, expert) > counts_.at(best, expert)))
      best = r;
  return best;
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
