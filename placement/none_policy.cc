#include "placement/policies.h"

#include <algorithm>
#include <numeric>

namespace dynamoe::placement {

Plan NonePolicy::Decide(const CountMatrix& counts) {
  LoadState state(model_, counts, Plan::None(counts.world_size, counts.num_experts));
  Plan plan = state.plan();
  plan.predicted_step_seconds = state.Evaluate();
  return plan;
}

std::vector<int64_t> ExpertsByLoad(const std::vector<int64_t>& loads) {
  std::vector<int64_t> order(loads.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return loads[a] > loads[b]; });
  return order;
}

}  // namespace dynamoe::placement
