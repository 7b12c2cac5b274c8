#include "scheduler/layer_signature.h"

#include <ATen/ATen.h>

#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "monitor/phases.h"
#include "placement/policy.h"
#include "scheduler/expert_parallel.h"

namespace dynamoe::scheduler {
namespace {

struct FieldInfo {
  const char* name;
  const char* hint;
};

// Names and remedies, in Field order (kName/kLayer/kStep have their own message).
constexpr FieldInfo kFields[LayerSignature::kCount] = {
    {"layer name", ""},
    {"layer", ""},
    {"step", ""},
    {"num_experts", "build the model identically on every rank"},
    {"d_model", "build the model identically on every rank"},
    {"d_hidden", "build the model identically on every rank"},
    {"dtype", "convert the model to the same dtype on every rank"},
    {"gated", "build the model identically on every rank"},
    {"bias", "build the model identically on every rank"},
    {"top_k", "build the model identically on every rank"},
    {"custom experts", "build the model identically on every rank"},
    {"placement", "pass the same placement= (or DYNAMOE_PLACEMENT) on every rank"},
    {"schedule", "pass the same schedule= (or DYNAMOE_SCHEDULE) on every rank"},
    {"group_size", "pass the same group_size= (or DYNAMOE_GROUP_SIZE) on every rank"},
    {"overlap_degree", "pass the same overlap_degree= (or DYNAMOE_OVERLAP_DEGREE) on every rank"},
    {"ranks per node", "set DYNAMOE_RANKS_PER_NODE, or launch every node with the same LOCAL_WORLD_SIZE"},
    {"training mode",
     "a rank is in eval mode or runs an extra forward: every rank must run the same forwards in the same mode"},
    {"input requires_grad", "every rank must run the layer with the same torch.no_grad() and requires_grad"},
    {"parameters require_grad", "every rank must run the layer with the same torch.no_grad() and requires_grad"},
    {"DYNAMOE_* configuration", "set the same DYNAMOE_* variables on every rank (dynamoe.config() lists them)"},
};

std::string Value(LayerSignature::Field f, int64_t v) {
  switch (f) {
    case LayerSignature::kDtype:
      return c10::toString(static_cast<at::ScalarType>(v));
    case LayerSignature::kPlacement:
      return v >= 0 && v < static_cast<int64_t>(placement::PolicyNames().size()) ? placement::PolicyNames()[v]
                                                                                 : absl::StrCat(v);
    case LayerSignature::kSchedule:
      return v == 1 ? "overlap" : "sequential";
    case LayerSignature::kTraining:
      return v ? "training" : "eval";
    case LayerSignature::kGated:
    case LayerSignature::kBias:
    case LayerSignature::kCustomExperts:
    case LayerSignature::kInputRequiresGrad:
    case LayerSignature::kParamsRequireGrad:
      return v ? "true" : "false";
    case LayerSignature::kConfigHash:
      return absl::StrFormat("%016x", static_cast<uint64_t>(v));
    default:
      return absl::StrCat(v);
  }
}

}  // namespace

int64_t PolicyIndex(const std::string& policy) {
  auto parsed = placement::ParsePolicy(policy);
  return parsed.ok() ? static_cast<int64_t>(*parsed) : -1;  // the PlacementPolicy value
}

absl::Status CheckSignatures(runtime::Communicator& comm, const LayerSignature& mine, const std::string& layer,
                             const at::Device& device) {
  constexpr int64_t K = LayerSignature::kCount;
  const at::Tensor payload = at::tensor(std::vector<int64_t>(mine.values.begin(), mine.values.end()),
                                        at::TensorOptions().dtype(at::kLong));
  at::Tensor all;
  DYNAMOE_ASSIGN_OR_RETURN(
      all, AllGatherHost(comm, payload, device, {layer, monitor::PhaseName(monitor::Phase::kCountAllGather), false}));
  const int64_t* g = all.data_ptr<int64_t>();
  const int me = comm.rank();
  auto who = [&](int64_t r) { return absl::StrFormat("rank %d (world rank %d)", r, comm.global_rank(static_cast<int>(r))); };
  // Ranks in another layer or step: the call sequences diverged.
  for (int64_t r = 0; r < comm.size(); ++r) {
    const int64_t* theirs = g + r * K;
    if (theirs[LayerSignature::kName] == mine[LayerSignature::kName] &&
        theirs[LayerSignature::kStep] == mine[LayerSignature::kStep])
      continue;
    return absl::FailedPreconditionError(absl::StrFormat(
        "layer '%s' phase 'count_allgather': ranks diverged: %s is in layer hash %016x step %d while rank %d is in "
        "layer '%s' (hash %016x) step %d; every rank must call the MoE layers in the same order and the same "
        "number of times",
        layer, who(r), static_cast<uint64_t>(theirs[LayerSignature::kLayer]), theirs[LayerSignature::kStep], me,
        layer, static_cast<uint64_t>(mine[LayerSignature::kLayer]), mine[LayerSignature::kStep]));
  }
  for (int f = LayerSignature::kNumExperts; f < K; ++f) {
    const auto field = static_cast<LayerSignature::Field>(f);
    bool differs = false;
    for (int64_t r = 0; r < comm.size(); ++r) differs |= g[r * K + f] != g[f];
    if (!differs) continue;
    std::vector<std::string> values;
    for (int64_t r = 0; r < comm.size(); ++r) values.push_back(absl::StrCat(who(r), " has ", Value(field, g[r * K + f])));
    return absl::FailedPreconditionError(absl::StrFormat(
        "layer '%s' phase 'count_allgather' step %d: ranks disagree on %s: %s; %s", layer,
        mine[LayerSignature::kStep], kFields[f].name, absl::StrJoin(values, ", "), kFields[f].hint));
  }
  return absl::OkStatus();
}

}  // namespace dynamoe::scheduler
