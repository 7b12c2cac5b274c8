// A placement plan: for every expert its owner (the rank whose optimizer
// holds it), the ranks that hold a copy, and how each source rank's tokens
// for it are split between the holders (the quotas, placement/quotas.h).
// Every rank computes the same Plan from the same counts; Hash() is what
// ranks compare.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "placement/count_matrix.h"

namespace dynamoe::placement {

// How the rows of one copied expert move: source s sends rows[k] to holder
// dest[k] for k in [start[s], start[s + 1]). Integers, computed from the
// count matrix (AssignQuotas), so they are exact and the same on every rank.
struct Quota {
  std::vector<int32_t> start;  // [world + 1]
  std::vector<int32_t> dest;   // holder rank of each piece
  std::vector<int64_t> rows;   // rows of each piece, > 0
  bool empty() const { return start.empty(); }
  // Rows source s sends under the quota (all pieces summed).
  int64_t SourceRows(int64_t s) const;
  bool operator==(const Quota& o) const { return start == o.start && dest == o.dest && rows == o.rows; }
};

struct Plan {
  int64_t world_size = 0;
  int64_t num_experts = 0;
  std::vector<int32_t> owner;                // [E]
  std::vector<std::vector<int32_t>> copies;  // [E]: ranks with a copy, ascending, owner excluded
  // [E] or empty. quotas[e] set: expert e's rows move as it says (for the
  // counts it was assigned on); empty: the even split rule below.
  std::vector<Quota> quotas;
  // The policy's prediction for the counts it was made (or last re-checked) on.
  double predicted_step_seconds = 0;

  // Plain expert parallelism: expert e on rank e / (E / world), no copies.
  // num_experts must be a multiple of world_size.
  static Plan None(int64_t world_size, int64_t num_experts);

  int64_t experts_per_rank() const { return num_experts / world_size; }
  bool Holds(int64_t rank, int64_t expert) const;
  int64_t NumHolders(int64_t expert) const { return 1 + static_cast<int64_t>(copies[expert].size()); }
  // The i-th holder: 0 is the owner, then the copies in ascending rank order.
  int32_t Holder(int64_t expert, int64_t i) const { return i == 0 ? owner[expert] : copies[expert][i - 1]; }
  // Experts with a copy on every rank (FasterMoE's shadowing), ascending.
  std::vector<int64_t> Shadowed() const;
  // [E]: copies of each expert beyond its owner.
  std::vector<int64_t> ReplicaCounts() const;
  int64_t TotalCopies() const;
  // Experts this rank holds a copy of (not its own), ascending.
  std::vector<int64_t> CopiesOn(int64_t rank) const;
  bool HasCopies() const { return TotalCopies() > 0; }

  // Whether expert e's rows follow a quota.
  bool HasQuota(int64_t expert) const { return !quotas.empty() && !quotas[expert].empty(); }

  // FNV-1a 64 over the shape, owners, copies and quotas (not the prediction).
  uint64_t Hash() const;
  // "shadowed [3] replicas {5: 1,2}" style one-line summary.
  std::string Summary() const;
  // Owners in range, copies ascending, distinct, in range and not the owner;
  // quotas, where set, send only to holders.
  absl::Status Validate() const;
  bool operator==(const Plan& o) const {
    return world_size == o.world_size && num_experts == o.num_experts && owner == o.owner && copies == o.copies &&
           quotas == o.quotas;
  }
};

// Where a plan carries a quota for the expert and it covers exactly the
// source's rows, the quota decides. Otherwise (plans without quotas, such as
// those read back from a trace, or counts other than the quota's) the split
// rule: a source that holds the expert keeps all its rows; any
// other source splits its rows evenly over the holders in holder order, the
// remainder rows going to the holders after the source's own position
// (rotated by source rank, so small remainders do not all land on the owner).
// Calls fn(source, expert, destination, rows) for every piece with rows > 0,
// for source ascending, then expert ascending, then holder order.
template <typename Fn>
void ForEachRoute(const Plan& plan, const CountMatrix& counts, Fn&& fn);

// The split rule on an explicit holder set (owner, then copies ascending).
template <typename Fn>
void SplitRows(int32_t owner, const std::vector<int32_t>& copies, bool source_holds, int64_t source, int64_t rows,
               Fn&& fn) {
  if (rows <= 0) return;
  if (source_holds) {
    fn(source, rows);
    return;
  }
  const int64_t n = 1 + static_cast<int64_t>(copies.size()), base = rows / n, rem = rows % n;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t share = base + (((i - source) % n + n) % n < rem ? 1 : 0);
    if (share > 0) fn(static_cast<int64_t>(i == 0 ? owner : copies[i - 1]), share);
  }
}

// One (source, expert) only.
template <typename Fn>
void RoutesOf(const Plan& plan, int64_t source, int64_t expert, int64_t rows, Fn&& fn) {
  if (rows <= 0) return;
  if (plan.HasQuota(expert)) {
    const Quota& q = plan.quotas[expert];
    if (q.SourceRows(source) == rows) {
      for (int32_t k = q.start[source]; k < q.start[source + 1]; ++k) fn(source, expert, q.dest[k], q.rows[k]);
      return;
    }
  }
  SplitRows(plan.owner[expert], plan.copies[expert], plan.Holds(source, expert), source, rows,
            [&](int64_t dest, int64_t n) { fn(source, expert, dest, n); });
}

template <typename Fn>
void ForEachRoute(const Plan& plan, const CountMatrix& counts, Fn&& fn) {
  for (int64_t s = 0; s < counts.world_size; ++s)
    for (int64_t e = 0; e < counts.num_experts; ++e) RoutesOf(plan, s, e, counts.at(s, e), fn);
}

}  // namespace dynamoe::placement
