#include "placement/load_state.h"

#include <algorithm>

#include "placement/quotas.h"

namespace dynamoe::placement {

LoadState::LoadState(const CostModel& model) : model_(model) { ReadRates(); }

void LoadState::ReadRates() {
  const CostModel& model = model_;
  const ClusterSpec& c = model.cluster();
  lat_[0] = c.intra_node_latency_s;
  lat_[1] = c.inter_node_latency_s;
  row_s_[0] = model.RowSeconds(true);
  row_s_[1] = model.RowSeconds(false);
  // ExpertSeconds' formula per link class.
  expert_s_[0] = c.intra_node_latency_s + model.layer().ExpertBytes() / c.intra_node_bw;
  expert_s_[1] = c.inter_node_latency_s + model.layer().ExpertBytes() / c.inter_node_bw;
}

LoadState::LoadState(const CostModel& model, const CountMatrix& counts, const Plan& plan) : LoadState(model) {
  Reset(counts, plan);
}

void LoadState::Reset(const CountMatrix& counts) {
  counts_ = &counts;
  P_ = counts.world_size;
  E_ = counts.num_experts;
  const int64_t per_rank = std::max<int64_t>(E_ / std::max<int64_t>(P_, 1), 1);
  plan_.world_size = P_;
  plan_.num_experts = E_;
  plan_.predicted_step_seconds = 0;
  plan_.owner.resize(E_);
  for (int64_t e = 0; e < E_; ++e) plan_.owner[e] = static_cast<int32_t>(e / per_rank);
  contiguous_owners_ = true;
  PlainPass();
}

void LoadState::Reset(const CountMatrix& counts, const Plan& plan) {
  counts_ = &counts;
  P_ = counts.world_size;
  E_ = counts.num_experts;
  plan_.world_size = P_;
  plan_.num_experts = E_;
  plan_.predicted_step_seconds = 0;
  plan_.owner = plan.owner;
  const int64_t per_rank = std::max<int64_t>(E_ / std::max<int64_t>(P_, 1), 1);
  contiguous_owners_ = true;
  for (int64_t e = 0; e < E_ && contiguous_owners_; ++e) contiguous_owners_ = plan_.owner[e] == e / per_rank;
  PlainPass();
  // ... then the plan's copies and quotas as edits.
  for (int64_t e = 0; e < E_; ++e) {
    if (plan.copies[e].empty()) continue;
    ReplaceCopies(e, plan.copies[e]);
    if (plan.HasQuota(e)) plan_.quotas[e] = plan.quotas[e];
    CollectRoutes(e, new_);
    Apply(new_, +1, Sink{rows_.data(), send_.data(), recv_.data()});
  }
}

namespace {

// out[i] += in[i]: most of the pass over the matrix. GCC at -O2 leaves this
// loop scalar (its cheap vectorizer takes no loops with an epilogue), so two
// lanes at a time by hand where the compiler has vector types.
inline void AddRow(int64_t* __restrict out, const int64_t* __restrict in, int64_t n) {
  int64_t i = 0;
#if defined(__GNUC__)
  typedef int64_t Lanes __attribute__((vector_size(16)));
  for (; i + 4 <= n; i += 4) {
    Lanes a, b, c, d;
    __builtin_memcpy(&a, out + i, 16);
    __builtin_memcpy(&b, out + i + 2, 16);
    __builtin_memcpy(&c, in + i, 16);
    __builtin_memcpy(&d, in + i + 2, 16);
    a += c;
    b += d;
    __builtin_memcpy(out + i, &a, 16);
    __builtin_memcpy(out + i + 2, &b, 16);
  }
#endif
  for (; i < n; ++i) out[i] += in[i];
}

}  // namespace

void LoadState::PlainPass() {
  best_quotas_done_ = false;
  watch_ = -1;
  const int64_t P = P_, E = E_;
  plan_.copies.resize(E);
  plan_.quotas.resize(E);
  for (int64_t e = 0; e < E; ++e) {
    plan_.copies[e].clear();
    Quota& q = plan_.quotas[e];
    q.start.clear();
    q.dest.clear();
    q.rows.clear();
  }
  rows_.assign(P, 0);
  link_.resize(P * P);
  send_.assign(P, Tally{});
  recv_.assign(P, Tally{});
  bsend_.assign(2 * P, 0);
  brecv_.assign(2 * P, 0);
  copies_on_.assign(P, 0);
  loads_.assign(E, 0);
  node_.resize(P);
  for (int64_t r = 0; r < P; ++r) node_[r] = static_cast<int32_t>(model_.cluster().NodeOf(r));
  routed_.assign(E, 1);
  column_at_.assign(E, -1);
  columns_.clear();
  d_rows_.assign(P, 0);
  d_send_.assign(P, Tally{});
  d_recv_.assign(P, Tally{});
  d_bsend_.assign(2 * P, 0);
  d_brecv_.assign(2 * P, 0);
  left_.resize(P);
  for (auto& v : pass_) v.assign(P, 0);
  off_rank_rows_ = 0;
  const int64_t per_node = model_.cluster().ranks_per_node > 0 ? model_.cluster().ranks_per_node : P;
  const int64_t per_rank = std::max<int64_t>(E / std::max<int64_t>(P, 1), 1);
  int64_t* loads = loads_.data();
  int64_t* rows = rows_.data();
  const int32_t* owner = plan_.owner.data();
  for (int64_t s = 0; s < P; ++s) {
    const int64_t* __restrict row = counts_->counts.data() + s * E;
    int64_t* __restrict link = link_.data() + s * P;
    // Expert loads (column sums) and this source's rows per destination rank:
    // with owners in blocks of per_rank experts, block sums; else by owner.
    AddRow(loads, row, E);
    if (contiguous_owners_ && per_rank * P == E) {
      switch (per_rank) {
        case 1:
          for (int64_t d = 0; d < P; ++d) link[d] = row[d];
          break;
        case 2:
          for (int64_t d = 0; d < P; ++d) link[d] = row[2 * d] + row[2 * d + 1];
          break;
        case 4:
          for (int64_t d = 0; d < P; ++d) link[d] = (row[4 * d] + row[4 * d + 1]) + (row[4 * d + 2] + row[4 * d + 3]);
          break;
        default:
          for (int64_t d = 0; d < P; ++d) {
            const int64_t* b = row + d * per_rank;
            int64_t sum = 0;
            for (int64_t j = 0; j < per_rank; ++j) sum += b[j];
            link[d] = sum;
          }
      }
    } else {
      std::fill(link, link + P, 0);
      for (int64_t e = 0; e < E; ++e) link[owner[e]] += row[e];
    }
    rows[s] += link[s];  // kept on the rank: no link
    link[s] = 0;
    // Tallies per link class: all links, then the intra-node ones (the
    // source's node is a block of ranks); inter = all - intra. Arrays of
    // plain integers so the loops stay simple.
    const int64_t lo = std::min(P, node_[s] * per_node), hi = std::min(P, lo + per_node);
    int64_t* __restrict all_rows = pass_[0].data();
    int64_t* __restrict all_links = pass_[1].data();
    int64_t* __restrict in_rows = pass_[2].data();
    int64_t* __restrict in_links = pass_[3].data();
    int64_t sent_rows = 0, sent_links = 0, sent_in_rows = 0, sent_in_links = 0;
    for (int64_t d = 0; d < P; ++d) {
      const int64_t n = link[d], on = n != 0;
      rows[d] += n;
      all_rows[d] += n;
      all_links[d] += on;
      sent_rows += n;
      sent_links += on;
    }
    for (int64_t d = lo; d < hi; ++d) {
      const int64_t n = link[d], on = n != 0;
      in_rows[d] += n;
      in_links[d] += on;
      sent_in_rows += n;
      sent_in_links += on;
    }
    send_[s].rows[0] = sent_in_rows;
    send_[s].links[0] = sent_in_links;
    send_[s].rows[1] = sent_rows - sent_in_rows;
    send_[s].links[1] = sent_links - sent_in_links;
    off_rank_rows_ += sent_rows;
  }
  for (int64_t d = 0; d < P; ++d) {
    recv_[d].rows[0] = pass_[2][d];
    recv_[d].links[0] = pass_[3][d];
    recv_[d].rows[1] = pass_[0][d] - pass_[2][d];
    recv_[d].links[1] = pass_[1][d] - pass_[3][d];
  }
}

const int64_t* LoadState::Column(int64_t expert) {
  if (column_at_[expert] < 0) {
    column_at_[expert] = static_cast<int32_t>(columns_.size());
    columns_.resize(columns_.size() + P_);
    int64_t* out = columns_.data() + column_at_[expert];
    const int64_t* m = counts_->counts.data() + expert;
    for (int64_t s = 0; s < P_; ++s) out[s] = m[s * E_];
  }
  return columns_.data() + column_at_[expert];
}

void LoadState::SplitPieces(int64_t expert, const std::vector<int32_t>& copies, std::vector<Piece>& out) {
  out.clear();
  const int64_t* col = Column(expert);
  const int32_t owner = plan_.owner[expert];
  if (copies.empty()) {
    for (int64_t s = 0; s < P_; ++s)
      if (col[s] > 0) out.push_back({static_cast<int32_t>(s), owner, col[s]});
    return;
  }
  const int64_t n = 1 + static_cast<int64_t>(copies.size());
  if (n == P_) {  // on every rank: every source keeps its rows
    for (int64_t s = 0; s < P_; ++s)
      if (col[s] > 0) out.push_back({static_cast<int32_t>(s), static_cast<int32_t>(s), col[s]});
    return;
  }
  for (int64_t s = 0; s < P_; ++s) {
    const int64_t rows = col[s];
    if (rows <= 0) continue;
    const bool holds = s == owner || std::binary_search(copies.begin(), copies.end(), static_cast<int32_t>(s));
    SplitRows(owner, copies, holds, s, rows, [&](int64_t dest, int64_t share) {
      out.push_back({static_cast<int32_t>(s), static_cast<int32_t>(dest), share});
    });
  }
}

void LoadState::CollectRoutes(int64_t expert, std::vector<Piece>& out) {
  if (!plan_.HasQuota(expert)) return SplitPieces(expert, plan_.copies[expert], out);
  out.clear();
  const int64_t* col = Column(expert);
  for (int64_t s = 0; s < P_; ++s) {
    if (col[s] <= 0) continue;
    RoutesOf(plan_, s, expert, col[s], [&](int64_t src, int64_t, int64_t dst, int64_t rows) {
      out.push_back({static_cast<int32_t>(src), static_cast<int32_t>(dst), rows});
    });
  }
}

bool LoadState::FillTargets(int64_t expert, const int32_t* holders, int64_t n, const int64_t* base,
                            bool keep_own_rows, int64_t* targets) {
  const int64_t* col = Column(expert);
  own_.resize(n);
  order_.resize(n);
  base_.resize(n);
  int64_t rows = loads_[expert];
  for (int64_t i = 0; i < n; ++i) {
    own_[i] = col[holders[i]];
    base_[i] = base[i] + (keep_own_rows ? own_[i] : 0);
    if (keep_own_rows) rows -= own_[i];
  }
  WaterFillInto(base_.data(), n, rows, targets, order_.data());
  bool own_fits = true;
  for (int64_t i = 0; i < n; ++i) {
    if (keep_own_rows) targets[i] += own_[i];
    own_fits = own_fits && targets[i] >= own_[i];
  }
  return own_fits;
}

bool LoadState::BalancedPieces(int64_t expert, const int32_t* holders, int64_t n, const int64_t* base,
                               bool keep_own_rows, std::vector<Piece>& out) {
  targets_.resize(n);
  const bool own_fits = FillTargets(expert, holders, n, base, keep_own_rows, targets_.data());
  PiecesFromTargets(expert, holders, n, targets_.data(), out);
  return own_fits;
}

void LoadState::PiecesFromTargets(int64_t expert, const int32_t* holders, int64_t n, const int64_t* targets,
                                  std::vector<Piece>& out) {
  out.clear();
  const int64_t* col = Column(expert);
  need_.assign(targets, targets + n);
  order_.resize(n);
  // Each holder's share: its own rows first, then same-node sources, then
  // any source in rank order (quotas.h).
  int64_t* left = left_.data();
  for (int64_t s = 0; s < P_; ++s) left[s] = col[s];
  auto take = [&](int64_t s, int64_t i) {
    const int64_t k = std::min(left[s], need_[i]);
    if (k <= 0) return;
    out.push_back({static_cast<int32_t>(s), holders[i], k});
    left[s] -= k;
    need_[i] -= k;
  };
  for (int64_t i = 0; i < n; ++i) take(holders[i], i);
  if (model_.cluster().MultiNode()) {
    // Holders grouped by node (holder order within a node): each node's
    // sources take from its holders, which is the sources-ascending order
    // since a source only meets the holders of its own node.
    for (int64_t i = 0; i < n; ++i) order_[i] = static_cast<int32_t>(i);
    std::sort(order_.begin(), order_.begin() + n, [&](int32_t a, int32_t b) {
      return node_[holders[a]] != node_[holders[b]] ? node_[holders[a]] < node_[holders[b]] : a < b;
    });
    const int64_t per_node = model_.cluster().ranks_per_node;
    for (int64_t g = 0; g < n;) {
      int64_t h = g;
      const int32_t node = node_[holders[order_[g]]];
      while (h < n && node_[holders[order_[h]]] == node) ++h;
      const int64_t lo = std::min<int64_t>(P_, node * per_node), hi = std::min<int64_t>(P_, lo + per_node);
      for (int64_t s = lo; s < hi; ++s)
        for (int64_t j = g; j < h && left[s] > 0; ++j) take(s, order_[j]);
      g = h;
    }
  }
  int64_t i = 0;
  for (int64_t s = 0; s < P_ && i < n; ++s)
    while (left[s] > 0 && i < n) {
      take(s, i);
      if (need_[i] == 0) ++i;
    }
}

void LoadState::Apply(const std::vector<Piece>& pieces, int64_t sign, const Sink& sink) {
  // The hottest loop of a decision: locals, and the link count's change
  // without a branch.
  int64_t* __restrict link = link_.data();
  const int32_t* node = node_.data();
  const int64_t P = P_;
  int64_t off = 0;
  for (const Piece& p : pieces) {
    const int64_t k = sign * p.rows;
    sink.rows[p.dst] += k;
    if (p.src == p.dst) continue;
    int64_t& l = link[p.src * P + p.dst];
    const int64_t was = l;
    l = was + k;
    const int c = node[p.src] != node[p.dst];
    const int64_t on = static_cast<int64_t>(was + k > 0) - static_cast<int64_t>(was > 0);
    Tally& s = sink.send[p.src];
    Tally& r = sink.recv[p.dst];
    s.rows[c] += k;
    r.rows[c] += k;
    s.links[c] += on;
    r.links[c] += on;
    off += k;
  }
  off_rank_delta_ += off;
}

void LoadState::Relink(const std::vector<Piece>& pieces, int64_t sign) {
  int64_t* link = link_.data();
  for (const Piece& p : pieces)
    if (p.src != p.dst) link[p.src * P_ + p.dst] += sign * p.rows;
}

void LoadState::ApplyBroadcast(int64_t expert, int64_t rank, int64_t sign, int64_t* send, int64_t* recv) {
  const int32_t owner = plan_.owner[expert];
  const int c = Class(owner, rank);
  send[c * P_ + owner] += sign;
  recv[c * P_ + rank] += sign;
}

void LoadState::StoreQuota(int64_t expert, const std::vector<Piece>& pieces) {
  Quota& q = plan_.quotas[expert];
  q.start.assign(P_ + 1, 0);
  for (const Piece& p : pieces) ++q.start[p.src + 1];
  for (int64_t s = 0; s < P_; ++s) q.start[s + 1] += q.start[s];
  q.dest.resize(pieces.size());
  q.rows.resize(pieces.size());
  piece_count_.assign(q.start.begin(), q.start.end() - 1);  // next free slot per source
  for (const Piece& p : pieces) {
    const int32_t k = piece_count_[p.src]++;
    q.dest[k] = p.dst;
    q.rows[k] = p.rows;
  }
  // Within a source: holders ascending, repeats merged.
  int32_t w = 0;
  for (int64_t s = 0; s < P_; ++s) {
    const int32_t b = q.start[s], e = q.start[s + 1];
    for (int32_t i = b + 1; i < e; ++i)  // insertion sort: a source has few pieces
      for (int32_t j = i; j > b && q.dest[j - 1] > q.dest[j]; --j) {
        std::swap(q.dest[j - 1], q.dest[j]);
        std::swap(q.rows[j - 1], q.rows[j]);
      }
    q.start[s] = w;
    for (int32_t i = b; i < e; ++i) {
      if (w > q.start[s] && q.dest[w - 1] == q.dest[i]) {
        q.rows[w - 1] += q.rows[i];
        continue;
      }
      q.dest[w] = q.dest[i];
      q.rows[w] = q.rows[i];
      ++w;
    }
  }
  q.start[P_] = w;
  q.dest.resize(w);
  q.rows.resize(w);
}

void LoadState::ReplaceCopies(int64_t expert, const std::vector<int32_t>& copies) {
  CollectRoutes(expert, old_);
  Apply(old_, -1, Sink{rows_.data(), send_.data(), recv_.data()});
  for (int32_t r : plan_.copies[expert]) {
    ApplyBroadcast(expert, r, -1, bsend_.data(), brecv_.data());
    --copies_on_[r];
  }
  plan_.copies[expert] = copies;
  for (int32_t r : plan_.copies[expert]) {
    ApplyBroadcast(expert, r, +1, bsend_.data(), brecv_.data());
    ++copies_on_[r];
  }
}

void LoadState::Reroute(int64_t expert, const std::vector<int32_t>& copies, Routing routing) {
  best_quotas_done_ = false;
  const Sink state{rows_.data(), send_.data(), recv_.data()};
  ReplaceCopies(expert, copies);
  Quota& q = plan_.quotas[expert];
  q.start.clear();
  q.dest.clear();
  q.rows.clear();
  if (routing == Routing::kSplit || plan_.copies[expert].empty()) {
    SplitPieces(expert, plan_.copies[expert], new_);
    Apply(new_, +1, state);
    return;
  }
  holders_.assign(1, plan_.owner[expert]);
  holders_.insert(holders_.end(), plan_.copies[expert].begin(), plan_.copies[expert].end());
  const int64_t n = static_cast<int64_t>(holders_.size());
  // Base loads of the holders: the state without this expert.
  holder_rows_.resize(n);
  for (int64_t i = 0; i < n; ++i) holder_rows_[i] = rows_[holders_[i]];
  const bool own_fits = BalancedPieces(expert, holders_.data(), n, holder_rows_.data(), false, new_);
  Apply(new_, +1, state);
  if (!own_fits) {
    // Keeping holders' own rows local may be faster (less token traffic).
    const double all = Evaluate();
    BalancedPieces(expert, holders_.data(), n, holder_rows_.data(), true, alt_);
    Apply(new_, -1, state);
    Apply(alt_, +1, state);
    if (!(Evaluate() < all)) {
      Apply(alt_, -1, state);
      Apply(new_, +1, state);
    } else {
      new_.swap(alt_);
    }
  }
  StoreQuota(expert, new_);
}

void LoadState::SetCopies(int64_t expert, const std::vector<int32_t>& copies, Routing routing) {
  if (&copies == &plan_.copies[expert]) {
    edit_ = copies;
    return Reroute(expert, edit_, routing);
  }
  Reroute(expert, copies, routing);
}

void LoadState::AddCopy(int64_t expert, int64_t rank, Routing routing) {
  edit_ = plan_.copies[expert];
  edit_.insert(std::upper_bound(edit_.begin(), edit_.end(), static_cast<int32_t>(rank)), static_cast<int32_t>(rank));
  Reroute(expert, edit_, routing);
}

void LoadState::RemoveCopy(int64_t expert, int64_t rank, Routing routing) {
  edit_ = plan_.copies[expert];
  edit_.erase(std::find(edit_.begin(), edit_.end(), static_cast<int32_t>(rank)));
  Reroute(expert, edit_, routing);
}

void LoadState::Shadow(int64_t expert) {
  edit_.clear();
  for (int32_t r = 0; r < P_; ++r)
    if (r != plan_.owner[expert]) edit_.push_back(r);
  Reroute(expert, edit_, Routing::kSplit);
}

double LoadState::Try(int64_t expert, const std::vector<int32_t>& copies, Routing routing) {
  tried_alt_ = false;  // KeepTried after a split-rule Try must not take a stale fill
  const Sink trial{d_rows_.data(), d_send_.data(), d_recv_.data()};
  const int32_t owner = plan_.owner[expert];
  for (int32_t r : plan_.copies[expert]) ApplyBroadcast(expert, r, -1, d_bsend_.data(), d_brecv_.data());
  for (int32_t r : copies) ApplyBroadcast(expert, r, +1, d_bsend_.data(), d_brecv_.data());
  CollectRoutes(expert, old_);
  off_rank_delta_ = 0;
  Apply(old_, -1, trial);
  double best;
  std::vector<Piece>* applied = &new_;
  if (routing == Routing::kSplit || copies.empty()) {
    SplitPieces(expert, copies, new_);
    Apply(new_, +1, trial);
    best = Totals(true).total;
    tried_off_rank_delta_ = off_rank_delta_;
    if (watch_ >= 0) tried_watch_rows_ = rows_[watch_] + d_rows_[watch_];
  } else {
    holders_.assign(1, owner);
    holders_.insert(holders_.end(), copies.begin(), copies.end());
    const int64_t n = static_cast<int64_t>(holders_.size());
    holder_rows_.resize(n);
    for (int64_t i = 0; i < n; ++i) holder_rows_[i] = rows_[holders_[i]] + d_rows_[holders_[i]];
    const bool own_fits = BalancedPieces(expert, holders_.data(), n, holder_rows_.data(), false, new_);
    Apply(new_, +1, trial);
    best = Totals(true).total;
    tried_off_rank_delta_ = off_rank_delta_;
    if (watch_ >= 0) tried_watch_rows_ = rows_[watch_] + d_rows_[watch_];
    tried_alt_ = false;
    if (!own_fits) {
      BalancedPieces(expert, holders_.data(), n, holder_rows_.data(), true, alt_);
      Apply(new_, -1, trial);
      Apply(alt_, +1, trial);
      const double t = Totals(true).total;
      applied = &alt_;
      if (t < best) {
        best = t;
        tried_alt_ = true;
        tried_off_rank_delta_ = off_rank_delta_;
        if (watch_ >= 0) tried_watch_rows_ = rows_[watch_] + d_rows_[watch_];
      }
    }
  }
  // Undo: link_ back to the state's, the deltas to zero (they were zero
  // before: cheaper than applying the pieces back).
  Relink(*applied, -1);
  Relink(old_, +1);
  std::fill(d_rows_.begin(), d_rows_.end(), 0);
  std::fill(d_send_.begin(), d_send_.end(), Tally{});
  std::fill(d_recv_.begin(), d_recv_.end(), Tally{});
  for (int32_t r : plan_.copies[expert]) ApplyBroadcast(expert, r, +1, d_bsend_.data(), d_brecv_.data());
  for (int32_t r : copies) ApplyBroadcast(expert, r, -1, d_bsend_.data(), d_brecv_.data());
  return best;
}

void LoadState::KeepTried(int64_t expert, const std::vector<int32_t>& copies, int slot) {
  kept_expert_[slot] = expert;
  kept_copies_[slot] = copies;
  kept_[slot] = tried_alt_ ? alt_ : new_;
}

void LoadState::AddKept(int slot) {
  // Reroute(expert, copies, kBalanced) with the pieces Try found: the same
  // base loads and the same choice between the two fills.
  const int64_t expert = kept_expert_[slot];
  best_quotas_done_ = false;
  const Sink state{rows_.data(), send_.data(), recv_.data()};
  ReplaceCopies(expert, kept_copies_[slot]);
  Apply(kept_[slot], +1, state);
  StoreQuota(expert, kept_[slot]);
  kept_expert_[0] = kept_expert_[1] = -1;  // both scored on the state before this edit
}

void LoadState::Unroute(int64_t expert) {
  best_quotas_done_ = false;
  if (!routed_[expert]) return;
  CollectRoutes(expert, old_);
  Apply(old_, -1, Sink{rows_.data(), send_.data(), recv_.data()});
  routed_[expert] = 0;
}

void LoadState::SaveQuotas(int slot) {
  std::vector<int32_t>& experts = saved_experts_[slot];
  std::vector<Quota>& quotas = saved_quotas_[slot];
  experts.clear();
  for (int64_t e = 0; e < E_; ++e)
    if (!plan_.copies[e].empty()) experts.push_back(static_cast<int32_t>(e));
  if (quotas.size() < experts.size()) quotas.resize(experts.size());
  for (size_t i = 0; i < experts.size(); ++i) quotas[i] = plan_.quotas[experts[i]];  // reuses capacity
  saved_done_[slot] = best_quotas_done_;
  saved_seconds_[slot] = best_quotas_seconds_;
}

void LoadState::RestoreQuotas(int slot) {
  best_quotas_done_ = false;
  const Sink state{rows_.data(), send_.data(), recv_.data()};
  for (size_t i = 0; i < saved_experts_[slot].size(); ++i) {
    const int32_t e = saved_experts_[slot][i];
    const Quota& q = saved_quotas_[slot][i];
    if (plan_.quotas[e] == q) continue;
    CollectRoutes(e, old_);
    Apply(old_, -1, state);
    plan_.quotas[e] = q;
    CollectRoutes(e, new_);
    Apply(new_, +1, state);
  }
  best_quotas_done_ = saved_done_[slot];  // the same routing as then
  best_quotas_seconds_ = saved_seconds_[slot];
}

void LoadState::RestoreCopies(int slot, const std::vector<std::vector<int32_t>>& copies) {
  best_quotas_done_ = false;
  const Sink state{rows_.data(), send_.data(), recv_.data()};
  const std::vector<int32_t>& experts = saved_experts_[slot];
  size_t i = 0;
  for (int64_t e = 0; e < E_; ++e) {
    const Quota* q = i < experts.size() && experts[i] == e ? &saved_quotas_[slot][i++] : nullptr;
    Quota& now = plan_.quotas[e];
    if (plan_.copies[e] == copies[e] && (q ? now == *q : now.start.empty())) continue;
    ReplaceCopies(e, copies[e]);
    if (q) {
      now = *q;
    } else {
      now.start.clear();
      now.dest.clear();
      now.rows.clear();
    }
    CollectRoutes(e, new_);
    Apply(new_, +1, state);
  }
  best_quotas_done_ = saved_done_[slot];  // the same routing as then
  best_quotas_seconds_ = saved_seconds_[slot];
}

bool LoadState::AllQuotas() {
  for (int64_t e = 0; e < E_; ++e) {
    if (plan_.copies[e].empty()) continue;
    if (!plan_.HasQuota(e)) return false;
    const Quota& q = plan_.quotas[e];
    if (static_cast<int64_t>(q.start.size()) != P_ + 1) return false;
    const int64_t* col = Column(e);
    for (int64_t s = 0; s < P_; ++s)
      if (q.SourceRows(s) != col[s]) return false;
  }
  return true;
}

void LoadState::SortCopied() {
  // Fewer holders first (fewer choices), then heavier, then lower index.
  copied_.clear();
  for (int64_t e = 0; e < E_; ++e)
    if (!plan_.copies[e].empty()) copied_.push_back(static_cast<int32_t>(e));
  std::sort(copied_.begin(), copied_.end(), [&](int32_t a, int32_t b) {
    if (plan_.copies[a].size() != plan_.copies[b].size()) return plan_.copies[a].size() < plan_.copies[b].size();
    if (loads_[a] != loads_[b]) return loads_[a] > loads_[b];
    return a < b;
  });
}

void LoadState::Holders(int64_t expert) {
  holders_.assign(1, plan_.owner[expert]);
  holders_.insert(holders_.end(), plan_.copies[expert].begin(), plan_.copies[expert].end());
}

void LoadState::FillCopied(bool keep_own_rows, std::vector<int64_t>& fill) {
  // Pass 1 fills each expert onto the others filled so far; pass 2 re-fills
  // each with all the others fixed. Rows only: the pieces follow the targets.
  int64_t total = 0;
  for (int32_t e : copied_) total += 1 + static_cast<int64_t>(plan_.copies[e].size());
  fill.resize(total);
  for (int pass = 0; pass < 2; ++pass) {
    int64_t at = 0;
    for (int32_t e : copied_) {
      Holders(e);
      const int64_t n = static_cast<int64_t>(holders_.size());
      holder_rows_.resize(n);
      for (int64_t i = 0; i < n; ++i) {
        if (pass > 0) rows_[holders_[i]] -= fill[at + i];
        holder_rows_[i] = rows_[holders_[i]];
      }
      FillTargets(e, holders_.data(), n, holder_rows_.data(), keep_own_rows, fill.data() + at);
      for (int64_t i = 0; i < n; ++i) rows_[holders_[i]] += fill[at + i];
      at += n;
    }
  }
  AddFilled(fill, -1);
}

void LoadState::AddFilled(const std::vector<int64_t>& fill, int64_t sign) {
  int64_t at = 0;
  for (int32_t e : copied_) {
    rows_[plan_.owner[e]] += sign * fill[at++];
    for (int32_t r : plan_.copies[e]) rows_[r] += sign * fill[at++];
  }
}

void LoadState::RouteFilled(const std::vector<int64_t>& fill) {
  const Sink state{rows_.data(), send_.data(), recv_.data()};
  int64_t at = 0;
  for (int32_t e : copied_) {
    Holders(e);
    const int64_t n = static_cast<int64_t>(holders_.size());
    PiecesFromTargets(e, holders_.data(), n, fill.data() + at, new_);
    StoreQuota(e, new_);
    Apply(new_, +1, state);
    routed_[e] = 1;
    at += n;
  }
}

void LoadState::AssignQuotas(bool keep_own_rows) {
  SortCopied();
  for (int32_t e : copied_) Unroute(e);
  FillCopied(keep_own_rows, fill_[0]);
  // The fill is greedy, expert by expert: where copies cross it can leave a
  // busier rank than the even split rule's shares do; then those shares are
  // the targets (met own rows first, like any).
  std::vector<int64_t>& split = fill_[1];
  split.clear();
  for (int32_t e : copied_) {
    SplitPieces(e, plan_.copies[e], new_);
    Holders(e);
    const size_t at = split.size();
    split.resize(at + holders_.size(), 0);
    holder_index_.resize(P_);
    for (size_t i = 0; i < holders_.size(); ++i) holder_index_[holders_[i]] = static_cast<int32_t>(i);
    for (const Piece& p : new_) split[at + holder_index_[p.dst]] += p.rows;
  }
  auto busiest = [&](const std::vector<int64_t>& fill) {
    AddFilled(fill, +1);
    const int64_t most = *std::max_element(rows_.begin(), rows_.end());
    AddFilled(fill, -1);
    return most;
  };
  if (busiest(split) < busiest(fill_[0])) fill_[0].swap(split);
  RouteFilled(fill_[0]);
}

double LoadState::AssignBestQuotas() {
  if (best_quotas_done_) return best_quotas_seconds_;  // no edit since
  best_quotas_seconds_ = ChooseQuotas();
  best_quotas_done_ = true;
  return best_quotas_seconds_;
}

double LoadState::ChooseQuotas() {
  bool any = false;
  for (int64_t e = 0; e < E_ && !any; ++e) any = !plan_.copies[e].empty();
  if (!any) return Evaluate();
  // Candidates in order, the first of equal predictions kept: the quotas the
  // state has (a policy's own balanced edits), then AssignQuotas keeping
  // holders' own rows, then filling all rows.
  bool have = AllQuotas();
  double best = have ? Evaluate() : 0;
  const bool as_is = have;
  if (have) SaveQuotas(0);
  AssignQuotas(true);
  const double keep = Evaluate();
  bool keep_best = false;
  if (!have || keep < best) {
    best = keep;
    have = keep_best = true;
  }
  // All rows: filled on rows alone first; the same targets give the same
  // pieces and the same prediction, so only different ones are routed.
  AddFilled(fill_[0], -1);
  FillCopied(false, fill_[1]);
  AddFilled(fill_[0], +1);
  if (fill_[1] != fill_[0]) {
    if (keep_best) SaveQuotas(0);  // else slot 0 holds the state's own quotas already
    for (int32_t e : copied_) Unroute(e);
    RouteFilled(fill_[1]);
    const double all = Evaluate();
    if (all < best) return all;
    RestoreQuotas(0);
    return best;
  }
  if (as_is && !keep_best) RestoreQuotas(0);
  return best;
}

StepCost LoadState::Totals(bool with_trial) {
  double a2a = 0, bcast = 0;
  int64_t max_rows = 0;
  const int64_t P = P_;
  const int64_t *bs = bsend_.data(), *br = brecv_.data();
  if (!with_trial) {
    for (int64_t r = 0; r < P; ++r) {
      a2a = std::max({a2a, TallySeconds(send_[r]), TallySeconds(recv_[r])});
      bcast = std::max({bcast, static_cast<double>(bs[r]) * expert_s_[0] + static_cast<double>(bs[P + r]) * expert_s_[1],
                        static_cast<double>(br[r]) * expert_s_[0] + static_cast<double>(br[P + r]) * expert_s_[1]});
      max_rows = std::max(max_rows, rows_[r]);
    }
    return model_.Finish(a2a, max_rows, bcast);
  }
  const int64_t *dbs = d_bsend_.data(), *dbr = d_brecv_.data();
  for (int64_t r = 0; r < P; ++r) {
    Tally s = send_[r], v = recv_[r];
    for (int c = 0; c < 2; ++c) {
      s.rows[c] += d_send_[r].rows[c];
      s.links[c] += d_send_[r].links[c];
      v.rows[c] += d_recv_[r].rows[c];
      v.links[c] += d_recv_[r].links[c];
    }
    a2a = std::max({a2a, TallySeconds(s), TallySeconds(v)});
    bcast = std::max({bcast,
                      static_cast<double>(bs[r] + dbs[r]) * expert_s_[0] +
                          static_cast<double>(bs[P + r] + dbs[P + r]) * expert_s_[1],
                      static_cast<double>(br[r] + dbr[r]) * expert_s_[0] +
                          static_cast<double>(br[P + r] + dbr[P + r]) * expert_s_[1]});
    max_rows = std::max(max_rows, rows_[r] + d_rows_[r]);
  }
  return model_.Finish(a2a, max_rows, bcast);
}

StepCost LoadState::Cost() const { return const_cast<LoadState*>(this)->Totals(false); }

double LoadState::SendSeconds(int64_t rank) const { return TallySeconds(send_[rank]); }
double LoadState::RecvSeconds(int64_t rank) const { return TallySeconds(recv_[rank]); }

int64_t LoadState::RowsOf(int64_t expert, int64_t rank) {
  if (plan_.copies[expert].empty()) return plan_.owner[expert] == rank ? loads_[expert] : 0;
  int64_t n = 0;
  CollectRoutes(expert, alt_);
  for (const Piece& p : alt_)
    if (p.dst == rank) n += p.rows;
  return n;
}

int64_t LoadState::BusiestRank() const { return std::max_element(rows_.begin(), rows_.end()) - rows_.begin(); }

int64_t LoadState::IdlestNonHolder(int64_t expert) const {
  int64_t best = -1;
  for (int64_t r = 0; r < P_; ++r)
    if (!plan_.Holds(r, expert) && (best < 0 || rows_[r] < rows_[best])) best = r;
  return best;
}

int64_t LoadState::TopNonHolderSender(int64_t expert) const {
  int64_t best = -1;
  for (int64_t r = 0; r < P_; ++r)
    if (!plan_.Holds(r, expert) && counts_->at(r, expert) > 0 &&
        (best < 0 || counts_->at(r, expert) > counts_->at(best, expert)))
      best = r;
  return best;
}

}  // namespace dynamoe::placement
