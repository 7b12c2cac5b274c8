#include "placement/policies.h"

namespace dynamoe::placement {

Plan NonePolicy::Decide(const CountMatrix& counts) {
  LoadState state(model_, counts, Plan::None(counts.world_size, counts.num_experts));
  Plan plan = state.plan();
  plan.predicted_step_seconds = state.Evaluate();
  return plan;
}

}  // namespace dynamoe::placement
