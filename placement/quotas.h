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
// the same quotas, and they need not be recorded in traces.
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
// The quotas a policy uses: both AssignQuotas variants, keeping the one the
// model predicts faster (keep_own_rows on ties); returns that prediction.
double AssignBestQuotas(Plan& plan, const CountMatrix& counts, const CostModel& model);

// Integer water-filling: targets[i] >= 0 with sum == rows that minimise the
// highest load[holder[i]] + targets[i] (and then the next highest, ...).
// Ties: the earlier holder gets the extra row. Exposed for tests.
std::vector<int64_t> WaterFill(const std::vector<int64_t>& load, const std::vector<int32_t>& holders, int64_t rows);

}  // namespace dynamoe::placement
