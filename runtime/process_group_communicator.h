// The caller's own c10d process group as a dynamoe Communicator.
//
// The group's collectives run on the group itself, whatever its backend:
// NCCL for CUDA tensors, Gloo for CPU tensors, or Gloo moving CUDA tensors
// when several processes share a GPU. dynamoe adds what it adds to every
// communicator (TrackedCommunicator): a deadline on each torch Work, the
// heartbeat and peer diagnosis through `store`, and the counters. So a
// collective that a peer never joins is dynamoe's named error after
// DYNAMOE_TIMEOUT_S, whatever the group's own (often 30-minute) timeout.
#pragma once

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/communicator.h"

namespace dynamoe::runtime {

// Wraps `group`, held weakly: the caller owns it (a collective after the
// caller destroyed it is a named error, not a dangling group). `store` carries dynamoe's keys (the job's store, or one
// dynamoe is given), prefixed as JoinGroup (rendezvous.h) does; every member
// calls this at the same point. global_ranks: the world rank of each member,
// in group rank order (they name peers in errors); the group's rank and size
// must agree with them. check_config: compare every member's DYNAMOE_*
// configuration first (FailedPrecondition naming the first difference).
absl::StatusOr<CommunicatorPtr> CommunicatorFromProcessGroup(const c10::intrusive_ptr<c10d::ProcessGroup>& group,
                                                             const c10::intrusive_ptr<c10d::Store>& store,
                                                             const std::string& name,
                                                             const std::vector<int>& global_ranks,
                                                             bool check_config = true);

// The group torch registered as `group_name` (c10d::resolve_process_group:
// torch.distributed registers every group it creates under
// ProcessGroup.group_name); NotFound when none is.
absl::StatusOr<c10::intrusive_ptr<c10d::ProcessGroup>> ResolveProcessGroup(const std::string& group_name);

}  // namespace dynamoe::runtime
