#include "placement/count_matrix.h"

#include <algorithm>
#include <numeric>

#include "common/status.h"

namespace dynamoe::placement {

absl::StatusOr<CountMatrix> CountMatrix::Make(int64_t world_size, int64_t num_experts,
                                              std::vector<int64_t> counts) {
  DYNAMOE_CHECK_ARG(world_size >= 1 && num_experts >= 1, "count matrix needs world_size >= 1 and ",
                    "num_experts >= 1, got ", world_size, " x ", num_experts);
  DYNAMOE_CHECK_ARG(static_cast<int64_t>(counts.size()) == world_size * num_experts,
                    "count matrix of ", world_size, " x ", num_experts, " needs ",
                    world_size * num_experts, " entries, got ", counts.size());
  DYNAMOE_CHECK_ARG(std::all_of(counts.begin(), counts.end(), [](int64_t c) { return c >= 0; }),
                    "count matrix entries must be >= 0");
  return CountMatrix{world_size, num_experts, std::move(counts)};
}

std::vector<int64_t> CountMatrix::ExpertLoads() const {
  std::vector<int64_t> loads(num_experts, 0);
  for (int64_t r = 0; r < world_size; ++r)
    for (int64_t e = 0; e < num_experts; ++e) loads[e] += at(r, e);
  return loads;
}

int64_t CountMatrix::Total() const { return std::accumulate(counts.begin(), counts.end(), int64_t{0}); }

double LoadImbalance(const std::vector<int64_t>& expert_loads) {
  if (expert_loads.empty()) return 0.0;
  const double total = std::accumulate(expert_loads.begin(), expert_loads.end(), 0.0);
  if (total == 0) return 0.0;
  const double mean = total / static_cast<double>(expert_loads.size());
  return static_cast<double>(*std::max_element(expert_loads.begin(), expert_loads.end())) / mean;
}

int64_t DeadExperts(const std::vector<int64_t>& expert_loads) {
  return std::count(expert_loads.begin(), expert_loads.end(), 0);
}

}  // namespace dynamoe::placement
