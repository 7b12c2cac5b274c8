// CPU routing kernels: capacity, top-k selection, drop order and positions.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/status.h"
#include "kernels/kernels.h"

namespace dynamoe::kernels {

absl::StatusOr<int64_t> ExpertCapacity(int64_t num_tokens, int top_k, int64_t num_experts,
                                       double capacity_factor, int64_t min_capacity) {
  DYNAMOE_CHECK_ARG(num_tokens >= 0, "expert capacity: num_tokens must be >= 0, got ", num_tokens);
  DYNAMOE_CHECK_ARG(num_experts >= 1, "expert capacity: num_experts must be >= 1, got ", num_experts);
  DYNAMOE_CHECK_ARG(top_k >= 1 && top_k <= num_experts, "expert capacity: top_k must be in [1, num_experts=",
                    num_experts, "], got ", top_k);
  DYNAMOE_CHECK_ARG(std::isfinite(capacity_factor), "expert capacity: capacity_factor must be finite, got ",
                    capacity_factor);
  DYNAMOE_CHECK_ARG(min_capacity >= 0, "expert capacity: min_capacity must be >= 0, got ", min_capacity);
  if (capacity_factor == 0.0) return kUnlimitedCapacity;
  // Top-k experts are distinct, so no expert gets more than num_tokens
  // assignments: a larger bound changes nothing, and clamping here keeps a
  // huge factor from overflowing int64.
  const double bound = std::ceil(static_cast<double>(top_k) * static_cast<double>(num_tokens) /
                                 static_cast<double>(num_experts) * std::fabs(capacity_factor));
  const int64_t capacity = bound >= static_cast<double>(num_tokens) ? num_tokens : static_cast<int64_t>(bound);
  return std::max(min_capacity, capacity);
}

template <typename T>
absl::Status TopK(const T* key, int64_t num_tokens, int64_t num_experts, int top_k,
                  int64_t* expert_idx, int64_t row_begin, int64_t row_end) {
  DYNAMOE_CHECK_ARG(top_k >= 1 && top_k <= num_experts,
                    "top_k must be in [1, num_experts=", num_experts, "], got ", top_k);
  DYNAMOE_CHECK_ARG(row_begin >= 0 && row_end <= num_tokens && row_begin <= row_end,
                    "row range [", row_begin, ", ", row_end, ") outside [0, ", num_tokens, ")");
  std::vector<int64_t> order(num_experts);
  for (int64_t t = row_begin; t < row_end; ++t) {
    const T* row = key + t * num_experts;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + top_k, order.end(),
                      [row](int64_t a, int64_t b) {
                        // NaN ranks last so the order stays strict and weak.
                        const T va = row[a] != row[a] ? -HUGE_VAL : row[a];
                        const T vb = row[b] != row[b] ? -HUGE_VAL : row[b];
                        return va > vb || (va == vb && a < b);
                      });
    std::copy(order.begin(), order.begin() + top_k, expert_idx + t * top_k);
  }
  return absl::OkStatus();
}
template absl::Status TopK<float>(const float*, int64_t, int64_t, int, int64_t*, int64_t, int64_t);
template absl::Status TopK<double>(const double*, int64_t, int64_t, int, int64_t*, int64_t, int64_t);

double RtsPriority(uint64_t seed, int64_t step, int64_t token, int choice) {
  // splitmix64 over a mix of the inputs: cheap, stateless, well distributed.
  uint64_t z = seed * 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(step) * 0xBF58476D1CE4E5B9ull ^
               static_cast<uint64_t>(token) * 0x94D049BB133111EBull ^ static_cast<uint64_t>(choice);
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
}

absl::Status ComputeRouting(const int64_t* expert_idx, int64_t num_tokens, int top_k,
                            int64_t num_experts, const RoutingOptions& options,
                            int64_t* position, int64_t* kept_counts,
                            int64_t* routed_counts, int64_t* num_dropped) {
  DYNAMOE_CHECK_ARG(num_tokens >= 0, "num_tokens must be >= 0, got ", num_tokens);
  DYNAMOE_CHECK_ARG(num_experts >= 1, "num_experts must be >= 1, got ", num_experts);
  DYNAMOE_CHECK_ARG(top_k >= 1 && top_k <= num_experts && top_k <= kMaxTopK,
                    "top_k must be in [1, min(num_experts=", num_experts, ", ", kMaxTopK,
                    ")], got ", top_k);
  const int64_t num_assignments = num_tokens * top_k;
  std::fill(routed_counts, routed_counts + num_experts, 0);
  for (int64_t a = 0; a < num_assignments; ++a) {
    const int64_t e = expert_idx[a];
    DYNAMOE_CHECK_ARG(e >= 0 && e < num_experts, "expert index out of range [0, ", num_experts,
                      "): ", e, " at token ", a / top_k, " choice ", a % top_k);
    ++routed_counts[e];
  }

  // kept[a] is 1 when assignment a keeps its slot.
  std::vector<uint8_t> kept(num_assignments, 1);
  const int64_t capacity = options.capacity;
  const bool overflow =
      capacity != kUnlimitedCapacity &&
      std::any_of(routed_counts, routed_counts + num_experts,
                  [capacity](int64_t c) { return c > capacity; });
  if (overflow) {
    // Each expert's assignments in claim order: choice rank first, then token
    // index (or a seeded random priority with use_rts).
    std::vector<std::vector<int64_t>> claims(num_experts);
    for (int j = 0; j < top_k; ++j)
      for (int64_t t = 0; t < num_tokens; ++t) claims[expert_idx[t * top_k + j]].push_back(t * top_k + j);
    for (auto& list : claims) {
      if (static_cast<int64_t>(list.size()) <= capacity) continue;
      if (options.use_rts) {
        auto prio = [&](int64_t a) {
          return RtsPriority(options.rts_seed, options.step, a / top_k, static_cast<int>(a % top_k));
        };
        std::stable_sort(list.begin(), list.end(), [&](int64_t a, int64_t b) {
          const int64_t ja = a % top_k, jb = b % top_k;
          if (ja != jb) return ja < jb;
          return prio(a) > prio(b);
        });
      }
      for (size_t i = static_cast<size_t>(capacity); i < list.size(); ++i) kept[list[i]] = 0;
    }
  }

  std::fill(kept_counts, kept_counts + num_experts, 0);
  int64_t dropped = 0;
  for (int64_t a = 0; a < num_assignments; ++a) {
    if (kept[a]) ++kept_counts[expert_idx[a]];
    else ++dropped;
  }
  std::vector<int64_t> cursor(num_experts, 0);
  for (int64_t e = 1; e < num_experts; ++e) cursor[e] = cursor[e - 1] + kept_counts[e - 1];
  // Token-major walk: within an expert, rows are ordered by token index.
  for (int64_t a = 0; a < num_assignments; ++a)
    position[a] = kept[a] ? cursor[expert_idx[a]]++ : -1;
  *num_dropped = dropped;
  return absl::OkStatus();
}

absl::Status InvertPositions(const int64_t* position, int64_t num_assignments,
                             int64_t num_rows, int64_t* assignment) {
  std::fill(assignment, assignment + num_rows, -1);
  for (int64_t a = 0; a < num_assignments; ++a) {
    const int64_t row = position[a];
    if (row < 0) continue;
    DYNAMOE_CHECK_ARG(row < num_rows && assignment[row] == -1,
                      "position ", row, " of assignment ", a,
                      " is out of range or taken twice (rows: ", num_rows, ")");
    assignment[row] = a;
  }
  for (int64_t row = 0; row < num_rows; ++row)
    DYNAMOE_CHECK_ARG(assignment[row] >= 0, "row ", row, " of ", num_rows,
                      " receives no assignment: positions are not a permutation");
  return absl::OkStatus();
}

}  // namespace dynamoe::kernels
