// What the ranks of an expert-parallel group must agree on before a layer's
// tokens move. Every step all-gathers it (fixed size, so that ranks in
// different layers never meet in a collective of mismatched size, which Gloo
// answers by aborting the process) ahead of the counts, and every rank names
// the first difference: the layer and step (diverged ranks), then dtype,
// shapes, per-layer placement and schedule, ranks per node, training mode,
// whether gradients flow, and the DYNAMOE_* configuration hash.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "runtime/communicator.h"

namespace dynamoe::scheduler {

struct LayerSignature {
  enum Field : int {
    kName = 0,  // hash of the layer's name
    kLayer,     // LayerHash: name, experts, d_model, d_hidden, dtype
    kStep,
    kNumExperts,
    kDModel,
    kDHidden,
    kDtype,
    kGated,
    kBias,
    kTopK,
    kCustomExperts,
    kPlacement,
    kSchedule,
    kGroupSize,
    kOverlapDegree,
    kRanksPerNode,
    kTraining,
    kInputRequiresGrad,
    kParamsRequireGrad,
    kConfigHash,
    kCount
  };
  std::array<int64_t, kCount> values{};

  int64_t& operator[](Field f) { return values[f]; }
  int64_t operator[](Field f) const { return values[f]; }
};

// Index of a placement policy name in the order none, fastermoe, adaptive, eplb.
int64_t PolicyIndex(const std::string& policy);

// All-gathers `mine` over the group; FailedPrecondition naming the first
// field on which ranks differ, on every rank (each sees every signature).
// `device`: the layer's (an NCCL group moves the payload through it).
absl::Status CheckSignatures(runtime::Communicator& comm, const LayerSignature& mine, const std::string& layer,
                             const at::Device& device);

}  // namespace dynamoe::scheduler
