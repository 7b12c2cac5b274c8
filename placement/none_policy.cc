#include "placement/policies.h"

namespace dynamoe::placement {

// state_ already holds plain expert parallelism.
void NonePolicy::Decide(const CountMatrix&) {}

}  // namespace dynamoe::placement
