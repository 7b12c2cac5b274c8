#include "placement/cost_model.h"

#include <algorithm>

namespace dynamoe::placement {

CostModel::CostModel(ClusterSpec cluster, LayerSpec layer, CostOptions options)
    : cluster_(cluster), layer_(layer), options_(options) {
  row_bytes_ = layer_.RowBytes();
  expert_bytes_ = layer_.ExpertBytes();
  seconds_per_row_ = layer_.ForwardFlopsPerRow() / cluster_.flops;
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
  rows_.assign(P_, 0);
  link_rows_.assign(P_ * P_, 0);
  send_.assign(P_, 0.0);
  recv_.assign(P_, 0.0);
  bcast_send_.assign(P_, 0.0);
  bcast_recv_.assign(P_, 0.0);
  copies_on_.assign(P_, 0);
  for (int64_t e = 0; e < plan_.num_experts; ++e) {
    ApplyRoutes(e, +1);
    for (int32_t r : plan_.copies[e]) ApplyBroadcast(e, r, +1);
  }
}

void LoadState::ApplyLink(int64_t from, int64_t to, int64_t rows) {
  int64_t& n = link_rows_[from * P_ + to];
  const bool was_on = n > 0;
  n += rows;
  const bool is_on = n > 0;
  double t = static_cast<double>(rows) * model_.RowSeconds(from, to);
  if (was_on != is_on) t += (is_on ? 1.0 : -1.0) * model_.cluster().Latency(from, to);
  send_[from] += t;
  recv_[to] += t;
}

void LoadState::ApplyRoutes(int64_t expert, int64_t sign) {
  for (int64_t s = 0; s < P_; ++s)
    RoutesOf(plan_, s, expert, counts_.at(s, expert), [&](int64_t src, int64_t, int64_t dst, int64_t n) {
      rows_[dst] += sign * n;
      if (dst != src) ApplyLink(src, dst, sign * n);
    });
}

void LoadState::ApplyBroadcast(int64_t expert, int64_t rank, int64_t sign) {
  const double t = static_cast<double>(sign) * model_.ExpertSeconds(plan_.owner[expert], rank);
  bcast_send_[plan_.owner[expert]] += t;
  bcast_recv_[rank] += t;
  copies_on_[rank] += sign;
}

void LoadState::SetCopies(int64_t expert, std::vector<int32_t> copies) {
  ApplyRoutes(expert, -1);
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

StepCost LoadState::Cost() const {
  double a2a = 0, bcast = 0;
  int64_t max_rows = 0;
  for (int64_t r = 0; r < P_; ++r) {
    a2a = std::max({a2a, send_[r], recv_[r]});
    bcast = std::max({bcast, bcast_send_[r], bcast_recv_[r]});
    max_rows = std::max(max_rows, rows_[r]);
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

}  // namespace dynamoe::placement
