// Fault injection for the fault suite (tests only): DYNAMOE_FAULT makes one
// rank die or freeze at a chosen collective, so tests can place a failure in
// a phase (e.g. the copied experts' weight exchange) instead of near it.
//
//   DYNAMOE_FAULT=<kill|stop>,<phase>,<forward|backward>,<world rank>,<n>
//
// On that world rank, the n-th collective of that phase and direction
// raises SIGKILL (a crash: no cleanup) or SIGSTOP (frozen) before it starts.
// Unset (the default): nothing. A malformed value is reported once and ignored.
#pragma once

#include "runtime/communicator.h"

namespace dynamoe::runtime {

void MaybeInjectFault(const CollectiveTag& tag, int world_rank);

}  // namespace dynamoe::runtime
