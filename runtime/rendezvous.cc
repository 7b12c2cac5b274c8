#include "runtime/rendezvous.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cmath>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "common/status.h"
#include "runtime/c10d_communicator.h"
#ifdef DYNAMOE_HAVE_NCCL
#include "runtime/nccl_communicator.h"
#endif

namespace dynamoe::runtime {
namespace {

std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

std::chrono::milliseconds ConfiguredTimeout() {
  return std::chrono::milliseconds(
      static_cast<int64_t>(std::ceil(GlobalConfig().GetFloat("DYNAMOE_TIMEOUT_S") * 1000.0)));
}

absl::Status CheckEpSize(int world_size, int ep_size) {
  DYNAMOE_CHECK_ARG(ep_size >= 1 && world_size % ep_size == 0, "ep_size must divide the world size ",
                    world_size, ", got ", ep_size);
  return absl::OkStatus();
}

// torchrun's variables (they are the launcher's, not dynamoe's configuration).
absl::StatusOr<std::string> LauncherVar(const char* name, const char* fallback = nullptr) {
  const char* v = std::getenv(name);
  if (v && *v) return std::string(v);
  if (fallback) return std::string(fallback);
  return absl::FailedPreconditionError(absl::StrCat(
      "InitFromEnv: ", name, " is not set; start the job with torchrun, or set MASTER_ADDR, MASTER_PORT, "
      "RANK and WORLD_SIZE"));
}

absl::StatusOr<int> LauncherInt(const char* name, const char* fallback = nullptr) {
  DYNAMOE_ASSIGN_OR_RETURN(const std::string s, LauncherVar(name, fallback));
  int v = 0;
  DYNAMOE_CHECK_ARG(absl::SimpleAtoi(s, &v) && v >= 0, "InitFromEnv: ", name,
                    " must be a non-negative integer, got \"", s, "\"");
  return v;
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

absl::Status CheckConfigAgreement(c10d::Store& store, int rank, int size, const Config& config,
                                  std::chrono::milliseconds timeout) {
  const std::string mine = config.SharedValues();
  absl::Status result = absl::OkStatus();
  try {
    store.set(absl::StrCat("config/", rank), Bytes(mine));
    for (int r = 0; r < size && result.ok(); ++r) {
      if (r == rank) continue;
      const std::string key = absl::StrCat("config/", r);
      store.wait({key}, timeout);
      const std::vector<uint8_t> raw = store.get(key);
      result = CompareWith(config, mine, std::string(raw.begin(), raw.end()), rank, r);
    }
    // Nobody returns (and maybe exits, taking the store with it) before every
    // rank has read every configuration.
    store.set(absl::StrCat("config_read/", rank), Bytes("1"));
    std::vector<std::string> read;
    for (int r = 0; r < size; ++r) read.push_back(absl::StrCat("config_read/", r));
    store.wait(read, timeout);
  } catch (const std::exception& e) {
    // A rank that already found the difference reports it: the closing
    // barrier fails when the store's host, which found it too, has exited.
    if (!result.ok()) return result;
    return absl::DeadlineExceededError(absl::StrCat(
        "comparing configurations at start-up: rank ", rank, " of ", size,
        " did not hear from every peer within DYNAMOE_TIMEOUT_S (a rank did not start?): ", e.what()));
  }
  return result;
}

absl::StatusOr<CommunicatorPtr> CreateGroupCommunicator(const c10::intrusive_ptr<c10d::Store>& store,
                                                        const std::string& name, int rank,
                                                        const std::vector<int>& global_ranks,
                                                        const std::string& backend, int store_host,
                                                        bool check_config) {
  const int size = static_cast<int>(global_ranks.size());
  DYNAMOE_CHECK_ARG(rank >= 0 && rank < size, "group '", name, "': rank must be in [0, ", size, "), got ", rank);
  const Config& config = GlobalConfig();
  GroupInfo info;
  info.name = name;
  info.backend = backend;
  info.rank = rank;
  info.size = size;
  info.global_ranks = global_ranks;
  info.store_host = store_host;
  info.timeout = ConfiguredTimeout();
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>(absl::StrCat("dynamoe/", name), store);
  if (check_config) DYNAMOE_RETURN_IF_ERROR(CheckConfigAgreement(*prefixed, rank, size, config, info.timeout));
  if (backend == "gloo") return MakeGlooCommunicator(prefixed, info, config.Get("DYNAMOE_COMM_ADDR"));
#ifdef DYNAMOE_HAVE_NCCL
  if (backend == "nccl") return MakeNcclCommunicator(prefixed, info);
#endif
  return absl::InvalidArgumentError(absl::StrCat("group '", name, "': backend must be \"gloo\"",
#ifdef DYNAMOE_HAVE_NCCL
                                                 " or \"nccl\"",
#endif
                                                 ", got \"", backend, "\""));
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
  DYNAMOE_ASSIGN_OR_RETURN(const std::string addr, LauncherVar("MASTER_ADDR"));
  DYNAMOE_ASSIGN_OR_RETURN(const int port, LauncherInt("MASTER_PORT"));
  DYNAMOE_ASSIGN_OR_RETURN(const int rank, LauncherInt("RANK"));
  DYNAMOE_ASSIGN_OR_RETURN(const int world_size, LauncherInt("WORLD_SIZE"));
  DYNAMOE_ASSIGN_OR_RETURN(const int local_rank, LauncherInt("LOCAL_RANK", "0"));
  DYNAMOE_CHECK_ARG(world_size >= 1 && rank < world_size, "InitFromEnv: RANK must be in [0, WORLD_SIZE=",
                    world_size, "), got ", rank);
  // Under torchrun the agent already hosts a store on MASTER_PORT.
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  const bool host = rank == 0 && !(agent && std::string(agent) == "True");
  DYNAMOE_ASSIGN_OR_RETURN(auto store, ConnectStore(addr, port, host, world_size, ConfiguredTimeout()));
  return InitFromStore(store, rank, world_size, ep_size, backend, local_rank);
}

}  // namespace dynamoe::runtime
