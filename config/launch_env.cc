#include "config/launch_env.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dynamoe::runtime {
namespace {

constexpr const char* kNames[] = {"RANK",        "WORLD_SIZE",  "LOCAL_RANK",           "LOCAL_WORLD_SIZE",
                                  "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
                                  "TORCHELASTIC_USE_AGENT_STORE"};

absl::Status Int(const std::map<std::string, std::string>& env, const char* name, int min, int max,
                 std::optional<int>* out) {
  auto it = env.find(name);
  if (it == env.end() || it->second.empty()) return absl::OkStatus();
  int v = 0;
  DYNAMOE_CHECK_ARG(absl::SimpleAtoi(it->second, &v) && v >= min && v <= max, name, " must be an integer in [", min,
                    ", ", max, "], got \"", it->second, "\"");
  *out = v;
  return absl::OkStatus();
}

}  // namespace

std::string LaunchEnv::Incarnation() const {
  return absl::StrCat(run_id.empty() ? "job" : run_id, "/", restart_count);
}

absl::StatusOr<LaunchEnv> ParseLaunchEnv(const std::map<std::string, std::string>& env) {
  LaunchEnv e;
  constexpr int kMax = 1 << 30;
  DYNAMOE_RETURN_IF_ERROR(Int(env, "RANK", 0, kMax, &e.rank));
  DYNAMOE_RETURN_IF_ERROR(Int(env, "WORLD_SIZE", 1, kMax, &e.world_size));
  DYNAMOE_RETURN_IF_ERROR(Int(env, "LOCAL_RANK", 0, kMax, &e.local_rank));
  DYNAMOE_RETURN_IF_ERROR(Int(env, "LOCAL_WORLD_SIZE", 1, kMax, &e.local_world_size));
  DYNAMOE_RETURN_IF_ERROR(Int(env, "MASTER_PORT", 1, 65535, &e.master_port));
  std::optional<int> restarts;
  DYNAMOE_RETURN_IF_ERROR(Int(env, "TORCHELASTIC_RESTART_COUNT", 0, kMax, &restarts));
  e.restart_count = restarts.value_or(0);
  if (auto it = env.find("MASTER_ADDR"); it != env.end() && !it->second.empty()) e.master_addr = it->second;
  if (auto it = env.find("TORCHELASTIC_RUN_ID"); it != env.end()) e.run_id = it->second;
  if (auto it = env.find("TORCHELASTIC_USE_AGENT_STORE"); it != env.end()) e.use_agent_store = it->second == "True";
  if (e.rank && e.world_size)
    DYNAMOE_CHECK_ARG(*e.rank < *e.world_size, "RANK must be in [0, WORLD_SIZE=", *e.world_size, "), got ", *e.rank);
  if (e.local_rank && e.local_world_size)
    DYNAMOE_CHECK_ARG(*e.local_rank < *e.local_world_size, "LOCAL_RANK must be in [0, LOCAL_WORLD_SIZE=",
                      *e.local_world_size, "), got ", *e.local_rank);
  return e;
}

const LaunchEnv& GlobalLaunchEnv() {
  static const LaunchEnv env = [] {
    std::map<std::string, std::string> snapshot;
    for (const char* name : kNames)
      if (const char* v = std::getenv(name)) snapshot[name] = v;
    return ValueOrThrow(ParseLaunchEnv(snapshot));
  }();
  return env;
}

}  // namespace dynamoe::runtime
