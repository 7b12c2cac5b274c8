#include "runtime/rendezvous.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cmath>
#include <map>
#include <mutex>
#include <optional>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "common/status.h"
#include "runtime/c10d_communicator.h"
#include "runtime/call_within.h"
#include "config/launch_env.h"
#include "config/settings.h"
#ifdef DYNAMOE_HAVE_NCCL
#include "runtime/nccl_communicator.h"
#endif

namespace dynamoe::runtime {
namespace {

std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

std::chrono::milliseconds ConfiguredTimeout() {
  return std::chrono::milliseconds(
      static_cast<int64_t>(std::ceil(GlobalSettings().timeout_s * 1000.0)));
}

absl::Status CheckEpSize(int world_size, int ep_size) {
  DYNAMOE_CHECK_ARG(ep_size >= 1 && world_size % ep_size == 0, "ep_size must divide the world size ",
                    world_size, ", got ", ep_size);
  return absl::OkStatus();
}

// A torchrun variable InitFromEnv needs.
template <typename T>
absl::StatusOr<T> Required(const std::optional<T>& v, const char* name) {
  if (v.has_value()) return *v;
  return absl::FailedPreconditionError(absl::StrCat(
      "InitFromEnv: ", name, " is not set; start the job with torchrun, or set MASTER_ADDR, MASTER_PORT, "
      "RANK and WORLD_SIZE"));
}

}  // namespace

absl::StatusOr<std::vector<int>> EpGroupMembers(int world_rank, int world_size, int ep_size) {
  DYNAMOE_RETURN_IF_ERROR(CheckEpSize(world_size, ep_size));
  std::vector<int> members;
  for (int i = 0; i < ep_size; ++i) members.push_back(world_rank / ep_size * ep_size + i);
  return members;
}

absl::StatusOr<std::vector<int>> ExpertDpGroupMembers(int world_rank, int world_size, int ep_size) {
  DYNAMOE_RETURN_IF_ERROR(CheckEpSize(world_size, ep_size));
  std::vector<int> members;
  for (int r = world_rank % ep_size; r < world_size; r += ep_size) members.push_back(r);
  return members;
}

absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectStore(const std::string& host, int port, bool is_server,
                                                            int world_size, std::chrono::milliseconds timeout) {
  DYNAMOE_CHECK_ARG(port >= 0 && port < 65536, "store port must be in [0, 65535], got ", port);
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<uint16_t>(port);
  opts.isServer = is_server;
  opts.numWorkers = static_cast<size_t>(world_size);
  opts.waitWorkers = false;
  opts.timeout = timeout;
  try {
    return c10::intrusive_ptr<c10d::Store>(c10::make_intrusive<c10d::TCPStore>(host, opts));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(is_server ? "hosting" : "connecting to", " the store at ", host,
                                               ":", port, " failed: ", e.what()));
  }
}

namespace {

// The first difference between this rank's shared configuration and rank r's.
absl::Status CompareWith(const Config& config, const std::string& mine, const std::string& theirs, int rank,
                         int r) {
  if (theirs == mine) return absl::OkStatus();
  std::map<std::string, std::string> values;
  for (absl::string_view line : absl::StrSplit(theirs, '\n', absl::SkipEmpty())) {
    const std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    values[kv.first] = kv.second;
  }
  std::vector<std::string> warnings;
  auto other = ParseConfig(values, &warnings);
  const std::string key = other.ok() ? config.FirstDifference(*other) : "";
  if (key.empty())
    return absl::FailedPreconditionError(absl::StrCat("configuration differs between ranks: rank ", rank,
                                                      " has\n", mine, "rank ", r, " has\n", theirs));
  return absl::FailedPreconditionError(absl::StrFormat(
      "configuration differs between ranks: %s=%s on rank %d but %s=%s on rank %d; every rank must use the "
      "same value",
      key, config.Get(key), rank, key, other->Get(key), r));
}

}  // namespace

namespace {

std::string Who(const std::vector<int>& global_ranks, int r) {
  return global_ranks.empty() || global_ranks[r] == r ? absl::StrCat("rank ", r)
                                                      : absl::StrCat("rank ", r, " (world rank ", global_ranks[r], ")");
}

// The members whose `key/<r>` is not in the store, for a message; or why the
// store could not tell.
std::string Missing(c10d::Store& store, const std::string& key, int size, const std::vector<int>& global_ranks) {
  std::vector<std::string> missing;
  try {
    for (int r = 0; r < size; ++r)
      if (!store.check({absl::StrCat(key, "/", r)})) missing.push_back(Who(global_ranks, r));
  } catch (const std::exception& e) {
    return absl::StrCat("the store is unreachable (its host died or is frozen): ", e.what());
  }
  if (missing.empty()) return "every member arrived, but not in time";
  return absl::StrCat(absl::StrJoin(missing, ", "), missing.size() == 1 ? " has" : " have",
                      " not arrived (not started, died or frozen)");
}

}  // namespace

absl::Status Gather(c10d::Store& store, const std::string& key, int rank, int size, const std::vector<int>& global_ranks,
                    const std::string& mine, std::chrono::milliseconds timeout,
                    const std::function<absl::Status(int, const std::string&)>& check) {
  absl::Status result = absl::OkStatus();
  std::string stage = key;
  try {
    store.set(absl::StrCat(key, "/", rank), Bytes(mine));
    for (int r = 0; r < size && result.ok(); ++r) {
      if (r == rank) continue;
      const std::string k = absl::StrCat(key, "/", r);
      store.wait({k}, timeout);
      const std::vector<uint8_t> raw = store.get(k);
      result = check(r, std::string(raw.begin(), raw.end()));
    }
    // Nobody returns (and maybe exits, taking the store with it) before every
    // member has read every value.
    stage = absl::StrCat(key, "_read");
    store.set(absl::StrCat(stage, "/", rank), Bytes("1"));
    std::vector<std::string> read;
    for (int r = 0; r < size; ++r) read.push_back(absl::StrCat(stage, "/", r));
    store.wait(read, timeout);
  } catch (const std::exception& e) {
    // A member that already found a difference reports it: the closing
    // barrier fails when the store's host, which found it too, has exited.
    if (!result.ok()) return result;
    return absl::DeadlineExceededError(absl::StrCat(
        "rank ", rank, " of ", size, " did not hear from every member within DYNAMOE_TIMEOUT_S (",
        std::chrono::duration<double>(timeout).count(), " s): ", Missing(store, stage, size, global_ranks)));
  }
  return result;
}

absl::Status CheckConfigAgreement(c10d::Store& store, int rank, int size, const Config& config,
                                  std::chrono::milliseconds timeout) {
  const std::string mine = config.SharedValues();
  const absl::Status s = Gather(store, "config", rank, size, {}, mine, timeout, [&](int r, const std::string& theirs) {
    return CompareWith(config, mine, theirs, rank, r);
  });
  if (s.code() != absl::StatusCode::kDeadlineExceeded) return s;
  return absl::DeadlineExceededError(absl::StrCat("comparing configurations at start-up: ", s.message()));
}

namespace {

// The backend's connection under a deadline: a peer that dies or freezes
// while the full mesh connects is named instead of blocking for Gloo's own
// timeout. On expiry the connecting thread is left behind (it holds what it uses).
absl::StatusOr<CommunicatorPtr> ConnectWithDeadline(const c10::intrusive_ptr<c10d::Store>& store,
                                                    const GroupInfo& info,
                                                    std::function<absl::StatusOr<CommunicatorPtr>()> connect) {
  std::optional<absl::StatusOr<CommunicatorPtr>> connected =
      CallWithin<absl::StatusOr<CommunicatorPtr>>(info.timeout, std::move(connect));
  if (connected.has_value()) {
    if (connected->ok()) {
      try {
        store->set(absl::StrCat("connected/", info.rank), Bytes("1"));
      } catch (const std::exception&) {
      }
    }
    return *std::move(connected);
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "group '", info.name, "': connecting ", info.backend, " (rank ", info.rank, " of ", info.size,
      ") did not complete within DYNAMOE_TIMEOUT_S: ", Missing(*store, "connected", info.size, info.global_ranks)));
}

}  // namespace

absl::StatusOr<JoinedGroup> JoinGroup(const c10::intrusive_ptr<c10d::Store>& store, const std::string& name,
                                      int rank, const std::vector<int>& global_ranks, const std::string& backend,
                                      int store_host, bool check_config) {
  const int size = static_cast<int>(global_ranks.size());
  DYNAMOE_CHECK_ARG(rank >= 0 && rank < size, "group '", name, "': rank must be in [0, ", size, "), got ", rank);
  JoinedGroup joined;
  GroupInfo& info = joined.info;
  info.name = name;
  info.backend = backend;
  info.rank = rank;
  info.size = size;
  info.global_ranks = global_ranks;
  info.store_host = store_host;
  info.timeout = ConfiguredTimeout();
  // Keys of this incarnation of the job (a restarted job on a surviving
  // store starts afresh) and of this creation of the group (the members
  // create a group's communicators in the same order, so they agree on it).
  static std::mutex mu;
  static std::map<std::string, int> created;
  int generation;
  {
    std::lock_guard<std::mutex> lock(mu);
    generation = created[name]++;
  }
  joined.store = c10::make_intrusive<c10d::PrefixStore>(
      absl::StrCat("dynamoe/", GlobalLaunchEnv().Incarnation(), "/", name, "/", generation), store);
  if (check_config) {
    DYNAMOE_RETURN_IF_ERROR(CheckConfigAgreement(*joined.store, rank, size, GlobalConfig(), info.timeout));
  } else {
    const absl::Status s = Gather(*joined.store, "join", rank, size, global_ranks, "", info.timeout,
                                  [](int, const std::string&) { return absl::OkStatus(); });
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat("group '", name, "': ", s.message()));
  }
  return joined;
}

absl::StatusOr<CommunicatorPtr> CreateGroupCommunicator(const c10::intrusive_ptr<c10d::Store>& store,
                                                        const std::string& name, int rank,
                                                        const std::vector<int>& global_ranks,
                                                        const std::string& backend, int store_host,
                                                        bool check_config) {
  DYNAMOE_CHECK_ARG(backend == "gloo" || backend == "nccl", "group '", name, "': backend must be \"gloo\" or ",
                    "\"nccl\", got \"", backend, "\"");
  DYNAMOE_ASSIGN_OR_RETURN(JoinedGroup joined,
                           JoinGroup(store, name, rank, global_ranks, backend, store_host, check_config));
  const std::string bind = GlobalSettings().comm_addr;
  const c10::intrusive_ptr<c10d::Store> prefixed = joined.store;
  const GroupInfo info = joined.info;
  return ConnectWithDeadline(prefixed, info, [prefixed, info, bind]() -> absl::StatusOr<CommunicatorPtr> {
#ifdef DYNAMOE_HAVE_NCCL
    if (info.backend == "nccl") return MakeNcclCommunicator(prefixed, info);
#endif
    if (info.backend == "gloo") return MakeGlooCommunicator(prefixed, info, bind);
    return absl::UnimplementedError(absl::StrCat("group '", info.name, "': this build has no NCCL"));
  });
}

absl::StatusOr<std::shared_ptr<ParallelGroups>> InitFromStore(const c10::intrusive_ptr<c10d::Store>& store,
                                                              int world_rank, int world_size, int ep_size,
                                                              const std::string& backend, int local_rank) {
  if (ep_size == 0) ep_size = world_size;
  DYNAMOE_RETURN_IF_ERROR(CheckEpSize(world_size, ep_size));
  auto groups = std::make_shared<ParallelGroups>();
  groups->world_rank = world_rank;
  groups->world_size = world_size;
  groups->local_rank = local_rank;
  groups->ep_size = ep_size;
  groups->store = store;
  std::vector<int> all(world_size);
  for (int r = 0; r < world_size; ++r) all[r] = r;
  // The world checks the configuration of every rank; the subgroups need not.
  DYNAMOE_ASSIGN_OR_RETURN(groups->world, CreateGroupCommunicator(store, "world", world_rank, all, backend));
  DYNAMOE_ASSIGN_OR_RETURN(const std::vector<int> ep, EpGroupMembers(world_rank, world_size, ep_size));
  DYNAMOE_ASSIGN_OR_RETURN(const std::vector<int> edp, ExpertDpGroupMembers(world_rank, world_size, ep_size));
  if (ep_size == world_size) {
    groups->ep = groups->world;
  } else {
    DYNAMOE_ASSIGN_OR_RETURN(groups->ep, CreateGroupCommunicator(store, absl::StrCat("ep", world_rank / ep_size),
                                                                 world_rank % ep_size, ep, backend, 0,
                                                                 /*check_config=*/false));
  }
  if (ep_size == 1) {
    groups->expert_dp = groups->world;
  } else if (ep_size < world_size) {
    DYNAMOE_ASSIGN_OR_RETURN(groups->expert_dp,
                             CreateGroupCommunicator(store, absl::StrCat("edp", world_rank % ep_size),
                                                     world_rank / ep_size, edp, backend, 0,
                                                     /*check_config=*/false));
  }
  DYNAMOE_LOG(kInfo) << "rank " << world_rank << " of " << world_size << ": expert-parallel group of "
                     << ep_size << " ranks (" << backend << ")";
  return groups;
}

absl::StatusOr<std::shared_ptr<ParallelGroups>> InitFromEnv(int ep_size, const std::string& backend) {
  const LaunchEnv& env = GlobalLaunchEnv();
  DYNAMOE_ASSIGN_OR_RETURN(const std::string addr,
                           Required(env.master_addr, "MASTER_ADDR"));
  DYNAMOE_ASSIGN_OR_RETURN(const int port, Required(env.master_port, "MASTER_PORT"));
  DYNAMOE_ASSIGN_OR_RETURN(const int rank, Required(env.rank, "RANK"));
  DYNAMOE_ASSIGN_OR_RETURN(const int world_size, Required(env.world_size, "WORLD_SIZE"));
  // Under torchrun the agent already hosts a store on MASTER_PORT.
  const bool host = rank == 0 && !env.use_agent_store;
  DYNAMOE_ASSIGN_OR_RETURN(auto store, ConnectStore(addr, port, host, world_size, ConfiguredTimeout()));
  return InitFromStore(store, rank, world_size, ep_size, backend, env.local_rank.value_or(0));
}

}  // namespace dynamoe::runtime
