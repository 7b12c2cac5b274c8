// Load-aware token quotas: given a plan's holders and a step's count matrix,
// decide how many of each source rank's rows of each copied expert go to each
// holder, so that the busiest rank computes as few rows as possible.
//
//   1. Experts without copies load their owner with all their rows.
//   2. Copied experts' rows (optionally only those from non-holders; the
//      holders' own rows then stay local) are water-filled onto their holders: the rows raise the
//      least-loaded holders to a common level, in integers (the remainder goes
//      to the lowest-loaded holders, ties to the earlier holder). Experts with
//      fewer holders go first (they have fewer choices), then heavier ones;
//      one more pass re-fills each expert with the others fixed.
//   3. Each holder's target is met from its own rows first (they stay local),
//      then from sources on its node, then from the rest, sources in rank
//      order; so a source usually sends an expert's rows to one holder.
//
// A pure function of (owners, copies, counts, cluster): every rank computes
// the same quotas, and they need not be recorded in traces. The work is done
// on a LoadState (load_state.h; LoadState::AssignQuotas), which the policies
// reuse every step: one pass over the count matrix, then O(world) per copied
// expert.
#pragma once

#include <cstdint>
#include <vector>

#include "placement/count_matrix.h"
#include "placement/plan.h"
#include "placement/spec.h"

namespace dynamoe::placement {

// Sets plan.quotas for every copied expert (experts without copies get none).
// counts must have the plan's shape. keep_own_rows: a holder computes all its
// own rows and only the other sources' rows are water-filled (no more token
// traffic than the even split); false: all rows are water-filled, which
// balances further at the price of moving some holders' own rows.
void AssignQuotas(Plan& plan, const CountMatrix& counts, const ClusterSpec& cluster, bool keep_own_rows = true);

class CostModel;
class LoadState;
// The quotas a policy uses: of the plan's own quotas (when every copied
// expert has one that covers these counts) and both AssignQuotas variants,
// the one the model predicts fastest (in that order on ties); returns that
// prediction.
double AssignBestQuotas(Plan& plan, const CountMatrix& counts, const CostModel& model);
// The same on a state built on these counts (any copies, any routing): the
// state is brought to plan's copies, its quotas are chosen as above (the
// state's own routing counts as the plan's quotas), and plan.quotas is set
// from it. No pass over the count matrix.
double AssignBestQuotas(Plan& plan, LoadState& state);

// Integer water-filling: targets[i] >= 0 with sum == rows that minimise the
// highest load[holder[i]] + targets[i] (and then the next highest, ...).
// Ties: the earlier holder gets the extra row. Exposed for tests.
std::vector<int64_t> WaterFill(const std::vector<int64_t>& load, const std::vector<int32_t>& holders, int64_t rows);
// The same on n holders' loads (load[i] is holder i's), into targets[n];
// order is scratch of n entries. No allocation.
void WaterFillInto(const int64_t* load, int64_t n, int64_t rows, int64_t* targets, int32_t* order);

}  // namespace dynamoe::placement
