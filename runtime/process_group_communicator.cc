#include "runtime/process_group_communicator.h"

#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>  // torch >= 2.2 (cmake/Dependencies.cmake)

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "runtime/c10d_communicator.h"
#include "runtime/rendezvous.h"

namespace dynamoe::runtime {

absl::StatusOr<CommunicatorPtr> CommunicatorFromProcessGroup(const c10::intrusive_ptr<c10d::ProcessGroup>& group,
                                                             const c10::intrusive_ptr<c10d::Store>& store,
                                                             const std::string& name,
                                                             const std::vector<int>& global_ranks,
                                                             bool check_config) {
  DYNAMOE_CHECK_ARG(group, "group '", name, "': the process group is null");
  DYNAMOE_CHECK_ARG(store, "group '", name, "': the store is null; expected the job's store (or one for dynamoe)");
  const int size = group->getSize(), rank = group->getRank();
  DYNAMOE_CHECK_ARG(static_cast<int>(global_ranks.size()) == size, "group '", name, "': the process group has ",
                    size, " ranks but ", global_ranks.size(), " world ranks were given ([",
                    absl::StrJoin(global_ranks, ", "), "]); expected one per member, in group rank order");
  const std::string backend = group->getBackendName();
  DYNAMOE_ASSIGN_OR_RETURN(JoinedGroup joined, JoinGroup(store, name, rank, global_ranks, backend, 0, check_config));
  return CommunicatorPtr(c10::make_intrusive<C10dCommunicator>(group, joined.store, joined.info,
                                                                                     /*owned=*/false));
}

absl::StatusOr<c10::intrusive_ptr<c10d::ProcessGroup>> ResolveProcessGroup(const std::string& group_name) {
  // torch < 2.15 has no is_process_group_registered: resolve throws for a name
  // it does not hold, and may still list a destroyed group (it throws then too).
  try {
    return c10d::resolve_process_group(group_name);
  } catch (const c10::Error& e) {
    return absl::NotFoundError(absl::StrCat("no torch.distributed process group is registered as \"", group_name,
                                            "\" that this process can reach (expected ProcessGroup.group_name of a "
                                            "live group that init_process_group or new_group created): ",
                                            e.what_without_backtrace()));
  }
}

}  // namespace dynamoe::runtime
