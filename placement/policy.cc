#include "placement/policy.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/enum_names.h"
#include "common/log.h"
#include "common/status.h"
#include "placement/policies.h"
#include "placement/quotas.h"

namespace dynamoe::placement {
namespace {

constexpr EnumNames<PlacementPolicy, 4> kPolicyNames({"none", "fastermoe", "adaptive", "eplb"});

}  // namespace

const std::vector<std::string>& PolicyNames() {
  static const std::vector<std::string> names = kPolicyNames.List();
  return names;
}

absl::string_view PolicyName(PlacementPolicy policy) { return kPolicyNames.Name(policy); }

absl::StatusOr<PlacementPolicy> ParsePolicy(absl::string_view name) {
  return kPolicyNames.Parse(name, "placement: unknown policy");
}

Policy::Policy(PlacementPolicy kind, ClusterSpec cluster, LayerSpec layer, PolicyOptions options)
    : model_(cluster, layer, options.cost),
      options_(std::move(options)),
      state_(model_),
      kind_(kind),
      name_(PolicyName(kind)),
      world_size_(cluster.world_size) {}

int64_t Policy::CopiesAllowedPerRank() const {
  if (options_.memory_budget_bytes <= 0) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(options_.memory_budget_bytes / (2.0 * model_.layer().ExpertBytes()));
}

std::string Policy::LogPrefix() const { return absl::StrCat(options_.layer, " placement ", name_, " step ", step_, ":"); }

absl::StatusOr<Plan> Policy::Step(const CountMatrix& counts) {
  DYNAMOE_CHECK_ARG(counts.world_size == world_size_, options_.layer, " placement ", name_, ": count matrix has ",
                    counts.world_size, " ranks, expected the cluster's ", world_size_);
  DYNAMOE_CHECK_ARG(counts.num_experts % counts.world_size == 0, options_.layer, " placement ", name_,
                    ": num_experts (", counts.num_experts, ") must be a multiple of the world size (",
                    counts.world_size, ")");
  if (num_experts_ < 0) num_experts_ = counts.num_experts;
  DYNAMOE_CHECK_ARG(counts.num_experts == num_experts_, options_.layer, " placement ", name_, ": count matrix has ",
                    counts.num_experts, " experts, earlier steps had ", num_experts_);
  Observe(counts);
  const bool replan = !has_plan_ || step_ % std::max<int64_t>(options_.interval, 1) == 0;
  state_.Reset(counts);  // the one pass over the matrix
  if (replan) {
    Decide(counts);
    const Plan& chosen = state_.plan();
    plan_.world_size = chosen.world_size;
    plan_.num_experts = chosen.num_experts;
    plan_.owner = chosen.owner;
    plan_.copies = chosen.copies;  // element-wise: the plan's buffers are reused
    has_plan_ = true;
  }
  // Quotas follow every step's counts, whether or not the copies changed.
  plan_.predicted_step_seconds = AssignBestQuotas(plan_, state_);
  if (!replan) {
    DYNAMOE_LOG(kDebug) << LogPrefix() << " keeping the plan (" << plan_.Summary() << ") until the next re-plan; "
                        << "predicted " << plan_.predicted_step_seconds << " s";
  }
  ++step_;
  return plan_;
}

std::vector<int64_t> ExpertsByLoad(const std::vector<int64_t>& loads, int64_t first) {
  std::vector<int64_t> order(loads.size());
  std::iota(order.begin(), order.end(), 0);
  auto heavier = [&](int64_t a, int64_t b) { return loads[a] != loads[b] ? loads[a] > loads[b] : a < b; };
  if (first < 0 || first >= static_cast<int64_t>(order.size())) {
    std::sort(order.begin(), order.end(), heavier);
  } else {
    std::partial_sort(order.begin(), order.begin() + first, order.end(), heavier);
    order.resize(first);
  }
  return order;
}

absl::StatusOr<std::unique_ptr<Policy>> MakePolicy(PlacementPolicy policy, const ClusterSpec& cluster,
                                                   const LayerSpec& layer, const PolicyOptions& options) {
  DYNAMOE_CHECK_ARG(cluster.world_size >= 1, "placement: world_size must be >= 1, got ", cluster.world_size);
  DYNAMOE_CHECK_ARG(cluster.flops > 0 && cluster.intra_node_bw > 0 && cluster.inter_node_bw > 0,
                    "placement: flops and bandwidths must be > 0");
  DYNAMOE_CHECK_ARG(layer.d_model > 0 && layer.d_hidden >= 0 && layer.bytes_per_element > 0,
                    "placement: layer needs d_model > 0, d_hidden >= 0, bytes_per_element > 0");
  switch (policy) {
    case PlacementPolicy::kNone: return std::unique_ptr<Policy>(new NonePolicy(cluster, layer, options));
    case PlacementPolicy::kFasterMoE: return std::unique_ptr<Policy>(new FasterMoEPolicy(cluster, layer, options));
    case PlacementPolicy::kAdaptive: return std::unique_ptr<Policy>(new AdaptivePolicy(cluster, layer, options));
    case PlacementPolicy::kEplb: return std::unique_ptr<Policy>(new EplbPolicy(cluster, layer, options));
  }
  return absl::InvalidArgumentError(absl::StrCat("placement: bad policy value ", static_cast<int>(policy)));
}

absl::StatusOr<std::unique_ptr<Policy>> MakePolicy(const std::string& name, const ClusterSpec& cluster,
                                                   const LayerSpec& layer, const PolicyOptions& options) {
  DYNAMOE_ASSIGN_OR_RETURN(const PlacementPolicy policy, ParsePolicy(name));
  return MakePolicy(policy, cluster, layer, options);
}

}  // namespace dynamoe::placement
