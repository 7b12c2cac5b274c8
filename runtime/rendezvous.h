// Starting dynamoe's process groups.
//
// C++ jobs launched by torchrun call InitFromEnv(ep_size) once: it reads
// MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE and LOCAL_RANK, hosts (rank 0) or
// joins the TCP store, checks that every rank has the same DYNAMOE_*
// configuration, and builds the world, expert-parallel and expert-data-
// parallel communicators. Python builds one communicator per
// torch.distributed group through CreateGroupCommunicator (dynamoe/distributed.py).
#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/communicator.h"
#include "config/config.h"
#include "runtime/peer_monitor.h"

namespace dynamoe::runtime {

// Expert parallelism over `ep_size` consecutive ranks (DeepSpeed's layout):
// world rank r is rank r % ep_size of EP group r / ep_size, and holds the same
// experts as the ranks r % ep_size + k * ep_size (its expert-data-parallel
// group). Gradients: expert parameters are summed over expert_dp, every other
// parameter over world, and both are divided by the world size
// (ReduceGradients in bindings/ does this).
struct ParallelGroups {
  CommunicatorPtr world;
  CommunicatorPtr ep;
  CommunicatorPtr expert_dp;
  int world_rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int ep_size = 1;
  c10::intrusive_ptr<c10d::Store> store;  // the job's store, for the caller's own groups
};

// Members (world ranks) of the EP group and expert-DP group of `world_rank`;
// InvalidArgument when world_size % ep_size != 0.
absl::StatusOr<std::vector<int>> EpGroupMembers(int world_rank, int world_size, int ep_size);
absl::StatusOr<std::vector<int>> ExpertDpGroupMembers(int world_rank, int world_size, int ep_size);

// Client (or, with is_server, host) of a c10d TCPStore; operations time out
// after `timeout`.
absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectStore(const std::string& host, int port, bool is_server,
                                                            int world_size, std::chrono::milliseconds timeout);

// Every member publishes `mine` under `key`/<rank> and passes each peer's
// value to `check` (the first error is returned, on every rank that finds
// it); no member returns before all have read all. DeadlineExceeded after
// `timeout` names the members that did not arrive. global_ranks (optional)
// names them by world rank too.
absl::Status Gather(c10d::Store& store, const std::string& key, int rank, int size,
                    const std::vector<int>& global_ranks, const std::string& mine, std::chrono::milliseconds timeout,
                    const std::function<absl::Status(int, const std::string&)>& check);

// Every member publishes its shared configuration (Config::SharedValues);
// FailedPrecondition naming the first differing variable, on every rank.
absl::Status CheckConfigAgreement(c10d::Store& store, int rank, int size, const Config& config,
                                  std::chrono::milliseconds timeout);

// A group's members met in the store: its keys' prefix
// "dynamoe/<incarnation>/<name>/<generation>/" (LaunchEnv::Incarnation: a
// restarted job never reads its predecessor's keys; generation: the how-many-th
// group of this name this process creates), after the configuration check
// (or, with check_config false because a group spanning these ranks already
// did, after every member arrived), under the DYNAMOE_TIMEOUT_S deadline.
struct JoinedGroup {
  c10::intrusive_ptr<c10d::Store> store;  // prefixed
  GroupInfo info;
};
absl::StatusOr<JoinedGroup> JoinGroup(const c10::intrusive_ptr<c10d::Store>& store, const std::string& name,
                                      int rank, const std::vector<int>& global_ranks, const std::string& backend,
                                      int store_host = 0, bool check_config = true);

// The communicator of one group: prefixes the store's keys with
// "dynamoe/<incarnation>/<name>/<generation>/" (LaunchEnv::Incarnation: a
// restarted job never reads its predecessor's keys; generation: the how-many-th
// communicator of this name this process creates), checks the configuration
// (or, with check_config false because a group spanning these ranks already
// did, waits for every member), then connects the backend ("gloo"; "nccl" for
// the raw NCCL communicator when built with CUDA). Every stage has the
// DYNAMOE_TIMEOUT_S deadline and names the members that did not arrive.
absl::StatusOr<CommunicatorPtr> CreateGroupCommunicator(const c10::intrusive_ptr<c10d::Store>& store,
                                                        const std::string& name, int rank,
                                                        const std::vector<int>& global_ranks,
                                                        const std::string& backend, int store_host = 0,
                                                        bool check_config = true);

// From torchrun's environment. ep_size 0 means the world size.
absl::StatusOr<std::shared_ptr<ParallelGroups>> InitFromEnv(int ep_size = 0, const std::string& backend = "gloo");
// From a store the caller already has (e.g. its own TCPStore).
absl::StatusOr<std::shared_ptr<ParallelGroups>> InitFromStore(const c10::intrusive_ptr<c10d::Store>& store,
                                                              int world_rank, int world_size, int ep_size = 0,
                                                              const std::string& backend = "gloo",
                                                              int local_rank = 0);

}  // namespace dynamoe::runtime
