// What the launcher (torchrun, or a user setting torchrun's variables) tells
// a process: parsed once, validated, and the one place dynamoe reads RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and
// torchrun's restart bookkeeping. These are the launcher's variables, not
// dynamoe's configuration (config.h), so they are not hashed or compared.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace dynamoe::runtime {

struct LaunchEnv {
  std::optional<int> rank, world_size, local_rank, local_world_size;
  std::optional<std::string> master_addr;  // unset when empty
  std::optional<int> master_port;
  // torchrun: the job's id and how many times its workers were restarted
  // (--max-restarts); "" and 0 outside torchrun.
  std::string run_id;
  int restart_count = 0;
  bool use_agent_store = false;  // TORCHELASTIC_USE_AGENT_STORE=True: the agent hosts MASTER_PORT's store

  // Store keys of this incarnation of the job: a restarted job (same
  // agent store, new workers) never reads the keys of the one before.
  std::string Incarnation() const;
  // The global rank for file names and metrics: RANK, else 0.
  int RankOrZero() const { return rank.value_or(0); }
};

// From an environment snapshot; InvalidArgument names the variable, the
// value and what is accepted (integers >= 0, a port in [1, 65535]).
absl::StatusOr<LaunchEnv> ParseLaunchEnv(const std::map<std::string, std::string>& env);

// This process's, parsed on first use. Throws dynamoe::Error on a bad value.
const LaunchEnv& GlobalLaunchEnv();

}  // namespace dynamoe::runtime
