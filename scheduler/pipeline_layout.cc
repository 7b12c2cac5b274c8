#include "scheduler/pipeline_layout.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "common/status.h"

namespace dynamoe::scheduler {
namespace {

struct Piece {
  int64_t slot, rows;
};

// A unit's arrivals: for each listed source (in order), rows [lo, hi) of the
// expert-ordered block it sends here, cut into that source's pieces.
struct Arrival {
  int64_t source, lo, hi;
};

void FillUnit(PipelineUnit& unit, const std::vector<Arrival>& arrivals,
              const std::vector<std::vector<Piece>>& pieces_from, int64_t slots) {
  std::vector<std::vector<std::pair<int64_t, int64_t>>> by_slot(slots);  // (arrival start, rows)
  int64_t arrived = 0;
  for (const Arrival& a : arrivals) {
    int64_t pos = 0;
    for (const Piece& p : pieces_from[a.source]) {
      const int64_t lo = std::max(pos, a.lo), hi = std::min(pos + p.rows, a.hi);
      if (lo < hi) by_slot[p.slot].emplace_back(arrived + lo - a.lo, hi - lo);
      pos += p.rows;
    }
    arrived += a.hi - a.lo;
  }
  unit.recv_total = arrived;
  unit.slot_counts = at::zeros({slots}, at::TensorOptions().dtype(at::kLong));
  int64_t* counts = unit.slot_counts.data_ptr<int64_t>();
  std::vector<int64_t> perm;
  perm.reserve(arrived);
  for (int64_t k = 0; k < slots; ++k)
    for (const auto& [start, n] : by_slot[k]) {
      counts[k] += n;
      for (int64_t i = 0; i < n; ++i) perm.push_back(start + i);
    }
  unit.to_slot_major = PermutationTensor(std::move(perm));
  unit.to_source_major = InversePermutation(unit.to_slot_major);
}

int64_t ChunkStart(int64_t rows, int64_t chunk, int64_t degree) { return rows * chunk / degree; }

}  // namespace

int64_t ClampGroupSize(int64_t group_size, int64_t world_size) {
  return std::clamp<int64_t>(group_size, 1, std::max<int64_t>(1, world_size - 1));
}

int64_t PeerGroups(int64_t group_size, int64_t world_size) {
  const int64_t g = ClampGroupSize(group_size, world_size);
  return (world_size - 1 + g - 1) / g;
}

PipelineLayout MakePipelineLayout(const at::Tensor& kept_matrix, int rank, const placement::Plan& plan,
                                  int64_t group_size, int64_t degree) {
  DYNAMOE_THROW_IF(degree < 1, "overlap degree must be >= 1, got ", degree);
  const int64_t P = kept_matrix.size(0), E = kept_matrix.size(1);
  const placement::CountMatrix counts = ToCountMatrix(kept_matrix);
  PipelineLayout out;
  out.group_size = ClampGroupSize(group_size, P);
  out.groups = PeerGroups(group_size, P);
  out.degree = degree;
  out.slot_experts = SlotExperts(plan, rank);
  const int64_t slots = static_cast<int64_t>(out.slot_experts.size());
  std::vector<int64_t> slot_of(E, -1);
  for (int64_t k = 0; k < slots; ++k) slot_of[out.slot_experts[k]] = k;
  auto offset_of = [&](int64_t from, int64_t to) { return ((to - from) % P + P) % P; };
  auto in_group = [&](int64_t offset, int64_t g) {
    return offset >= 1 + g * out.group_size && offset < 1 + (g + 1) * out.group_size;
  };

  // Send side: this rank's expert-sorted row indices per destination, in
  // expert order; and, per source, the pieces it sends here.
  std::vector<std::vector<int64_t>> rows_to(P);
  std::vector<std::vector<Piece>> pieces_from(P);
  std::vector<int64_t> pair_rows(P * P, 0);
  int64_t sorted = 0;
  for (int64_t s = 0; s < P; ++s)
    for (int64_t e = 0; e < E; ++e)
      placement::RoutesOf(plan, s, e, counts.at(s, e), [&](int64_t, int64_t, int64_t d, int64_t n) {
        if (s == rank)
          for (int64_t i = 0; i < n; ++i) rows_to[d].push_back(sorted++);
        if (d == rank) pieces_from[s].push_back({slot_of[e], n});
        pair_rows[s * P + d] += n;
      });

  std::vector<int64_t> send_order(rows_to[rank]);
  out.local.send_total = static_cast<int64_t>(rows_to[rank].size());
  FillUnit(out.local, {{rank, 0, out.local.send_total}}, pieces_from, slots);

  for (int64_t g = 0; g < out.groups; ++g)
    for (int64_t c = 0; c < degree; ++c) {
      PipelineUnit unit;
      unit.send_offset = static_cast<int64_t>(send_order.size());
      unit.send_splits.assign(P, 0);
      unit.recv_splits.assign(P, 0);
      std::vector<Arrival> arrivals;
      for (int64_t r = 0; r < P; ++r) {
        if (in_group(offset_of(rank, r), g)) {  // r is a destination in this stage
          const int64_t n = static_cast<int64_t>(rows_to[r].size());
          const int64_t lo = ChunkStart(n, c, degree), hi = ChunkStart(n, c + 1, degree);
          send_order.insert(send_order.end(), rows_to[r].begin() + lo, rows_to[r].begin() + hi);
          unit.send_splits[r] = hi - lo;
        }
        if (in_group(offset_of(r, rank), g)) {  // r is a source in this stage
          int64_t n = 0;
          for (const Piece& p : pieces_from[r]) n += p.rows;
          const int64_t lo = ChunkStart(n, c, degree), hi = ChunkStart(n, c + 1, degree);
          arrivals.push_back({r, lo, hi});
          unit.recv_splits[r] = hi - lo;
        }
      }
      unit.send_total = static_cast<int64_t>(send_order.size()) - unit.send_offset;
      unit.idle = true;
      for (int64_t s = 0; s < P && unit.idle; ++s)
        for (int64_t d = 0; d < P && unit.idle; ++d)
          if (in_group(offset_of(s, d), g))
            unit.idle = ChunkStart(pair_rows[s * P + d], c + 1, degree) == ChunkStart(pair_rows[s * P + d], c, degree);
      FillUnit(unit, arrivals, pieces_from, slots);
      out.stages.push_back(std::move(unit));
    }
  DYNAMOE_THROW_IF(static_cast<int64_t>(send_order.size()) != sorted, "pipeline layout lost rows: ",
                   send_order.size(), " of ", sorted);
  out.to_send_order = PermutationTensor(std::move(send_order));
  out.from_send_order = InversePermutation(out.to_send_order);
  return out;
}

}  // namespace dynamoe::scheduler
