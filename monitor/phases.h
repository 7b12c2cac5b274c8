// Phases of one MoE step, named as the metrics and traces name them.
#pragma once

#include <array>
#include <chrono>

namespace dynamoe::monitor {

enum class Phase : int {
  kGate = 0,
  kCountAllGather,
  kPolicy,
  kShadowBroadcast,
  kDispatch,
  kExperts,
  kCombine,
  kShadowReduce,
  kCount  // number of phases
};
constexpr int kNumPhases = static_cast<int>(Phase::kCount);

constexpr std::array<const char*, kNumPhases> kPhaseNames = {
    "gate", "count_allgather", "policy", "shadow_broadcast", "dispatch", "experts", "combine", "shadow_reduce"};

inline const char* PhaseName(Phase p) { return kPhaseNames[static_cast<int>(p)]; }

// shadow_reduce runs in backward (the copies' gradients); the rest in forward.
constexpr bool IsForwardPhase(Phase p) { return p != Phase::kShadowReduce; }

// Seconds per phase of the last step. Plain array: the hot path only adds.
struct PhaseTimes {
  std::array<double, kNumPhases> seconds{};
  double& operator[](Phase p) { return seconds[static_cast<int>(p)]; }
  double operator[](Phase p) const { return seconds[static_cast<int>(p)]; }
};

// Adds the wall time of its scope to one phase.
class ScopedPhase {
 public:
  ScopedPhase(PhaseTimes& times, Phase phase)
      : slot_(times[phase]), start_(std::chrono::steady_clock::now()) {}
  ~ScopedPhase() {
    slot_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  ScopedPhase(const ScopedPhase&) = delete;
  ScopedPhase& operator=(const ScopedPhase&) = delete;

 private:
  double& slot_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace dynamoe::monitor
