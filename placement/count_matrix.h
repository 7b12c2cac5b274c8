// The per-step count matrix: counts[rank][expert] = token assignments that
// `rank` routed to `expert`. Pure C++: the replay tool and policies use it.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace dynamoe::placement {

struct CountMatrix {
  int64_t world_size = 0;
  int64_t num_experts = 0;
  std::vector<int64_t> counts;  // row-major [world_size, num_experts]

  static absl::StatusOr<CountMatrix> Make(int64_t world_size, int64_t num_experts,
                                          std::vector<int64_t> counts);
  int64_t at(int64_t rank, int64_t expert) const { return counts[rank * num_experts + expert]; }

  // Tokens each expert receives from all ranks: the sum over the rank axis.
  std::vector<int64_t> ExpertLoads() const;
  int64_t Total() const;
};

// max / mean of the per-expert loads; 1 is perfectly balanced, 0 if no tokens.
double LoadImbalance(const std::vector<int64_t>& expert_loads);
// Experts with no tokens.
int64_t DeadExperts(const std::vector<int64_t>& expert_loads);

}  // namespace dynamoe::placement
