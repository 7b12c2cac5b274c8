// FasterMoE's shadowing criterion (PPoPP'22; fmoe/fastermoe/shadow_policy.py)
// with its defects fixed. With experts sorted by global load B[0] >= B[1] >= ...,
// the original shadows expert k-1 while
//     (B[k-1] - B[k]) * (3 t_comp + 4 t_feat) > t_model
// i.e. while shadowing one more expert lowers the load of the busiest expert
// by more than its weights cost to send. Differences from the original:
//  1. B is the sum over ranks of the [world, experts] count matrix (tokens per
//     expert). FastMoE summed the other axis, getting one total per rank, so
//     with one expert per rank it compared ranks, not experts, and with a
//     single matrix row it never shadowed anything.
//  2. Training pays the gradient reduction too: the cost is 2 t_model
//     (broadcast + reduce); FastMoE counted the broadcast only.
//  3. Element size is the layer's (2 for bf16); FastMoE assumed 4 bytes.
//  4. t_model and t_comp use the layer's real d_hidden, gated third matrix and
//     biases; FastMoE assumed two matrices of alpha * d_model^2 with d_model
//     from FMOE_FASTER_GLBPLC_DMODEL. alpha is used only when d_hidden is unknown.
//  5. Bandwidth is the slowest link the exchange crosses (inter-node when the
//     group spans nodes, else intra-node); FastMoE used one NETBW for all.
//  6. Budgets: at most DYNAMOE_SHADOW_MAX experts and the memory budget.
// Inference (CostOptions::training = false) uses 1 t_comp + 2 t_feat and one
// t_model. Like the original, the coldest expert is never shadowed.
#include <cmath>

#include "absl/strings/str_format.h"
#include "common/log.h"
#include "placement/policies.h"

namespace dynamoe::placement {

void FasterMoEShadowing(LoadState& state, const PolicyOptions& options, int64_t copies_per_rank, std::string* why) {
  const CostModel& model = state.model();
  const ClusterSpec& cluster = model.cluster();
  LayerSpec layer = model.layer();
  if (layer.d_hidden == 0) layer.d_hidden = static_cast<int64_t>(std::llround(options.alpha * layer.d_model));
  const bool training = model.options().training;
  const double bw = cluster.MultiNode() ? cluster.inter_node_bw : cluster.intra_node_bw;
  const double t_feat = layer.RowBytes() / bw;
  const double t_model = layer.ExpertBytes() / bw;
  const double t_comp = layer.ForwardFlopsPerRow() / cluster.flops;
  const double per_token = training ? 3 * t_comp + 4 * t_feat : t_comp + 2 * t_feat;
  const double cost = training ? 2 * t_model : t_model;

  const std::vector<int64_t>& loads = state.expert_loads();
  // The loop reads at most the first max_shadowed + 2 experts by load.
  const int64_t max_shadowed = state.plan().world_size > 1 ? std::min(options.max_copied, copies_per_rank) : 0;
  const std::vector<int64_t> order = ExpertsByLoad(loads, max_shadowed + 2);
  int64_t shadowed = 0;
  for (size_t k = 1; k < order.size(); ++k) {
    const int64_t e = order[k - 1];
    const double gain = static_cast<double>(loads[e] - loads[order[k]]) * per_token;
    if (shadowed >= max_shadowed) {
      if (why)
        *why += absl::StrFormat(" expert %d (load %d) not shadowed: budget of %d shadowed experts reached;", e,
                                loads[e], max_shadowed);
      break;
    }
    if (!(gain > cost)) {
      if (why)
        *why += absl::StrFormat(" expert %d (load %d) not shadowed: gain %.3g s <= weights %.3g s;", e, loads[e],
                                gain, cost);
      break;
    }
    state.Shadow(e);
    ++shadowed;
    if (why)
      *why += absl::StrFormat(" expert %d (load %d, next %d) shadowed: gain %.3g s > weights %.3g s;", e, loads[e],
                              loads[order[k]], gain, cost);
  }
}

void FasterMoEPolicy::Decide(const CountMatrix&) {
  const double none_seconds = state_.Evaluate();
  const bool explain = LogEnabled(LogLevel::kDebug);
  std::string why;
  FasterMoEShadowing(state_, options_, CopiesAllowedPerRank(), explain ? &why : nullptr);
  if (explain)
    DYNAMOE_LOG(kDebug) << LogPrefix() << " predicted " << none_seconds << " s without copies, " << state_.Evaluate()
                        << " s with " << state_.plan().Summary() << " (before quotas);" << why;
}

}  // namespace dynamoe::placement
