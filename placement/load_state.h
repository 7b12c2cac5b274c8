// LoadState: the cost model's terms under edits of a plan (the policies' and
// the quotas' working state).
#pragma once

#include <cstdint>
#include <vector>

#include "placement/cost_model.h"
#include "placement/count_matrix.h"
#include "placement/plan.h"

namespace dynamoe::placement {

// How an edit routes the edited expert's rows.
//   kSplit     the split rule (plan.h): the expert's quota is dropped.
//   kBalanced  a quota water-filled for this expert alone (quotas.h): its
//              rows go to its holders so that the busiest of them, counting
//              every other expert's rows as they are, computes as few as
//              possible; all rows are filled, and when a holder's own rows
//              exceed its share the variant that keeps holders' own rows local
//              is scored too and the faster one kept.
enum class Routing { kSplit, kBalanced };

// The per-rank terms of the cost model kept up to date under edits of a plan,
// so a policy can try an action in O(world + holders) and score it in
// O(world). Evaluate() equals CostModel::Predict on the same plan (up to
// floating-point rounding; the tests check it). The per-rank terms are
// integer tallies (rows and links per link class, copies per class), so edits
// and their reversal are exact. Buffers are kept across Reset(): a policy
// reuses one state every step without allocating.
class LoadState {
 public:
  explicit LoadState(const CostModel& model);
  // Re-reads the model's rates (after Policy::SetCluster changed them); Reset next.
  void ReadRates();
  // Reset(counts, plan).
  LoadState(const CostModel& model, const CountMatrix& counts, const Plan& plan);

  // Plain expert parallelism (Plan::None) on `counts`, in one pass over the
  // matrix. counts must outlive the state's use; world size and experts may
  // differ from the last Reset.
  void Reset(const CountMatrix& counts);
  // The same pass with `plan`'s owners, then its copies (and quotas, where
  // they cover these counts) as edits.
  void Reset(const CountMatrix& counts, const Plan& plan);

  const Plan& plan() const { return plan_; }
  const CountMatrix& counts() const { return *counts_; }
  const CostModel& model() const { return model_; }
  double Evaluate() const { return Cost().total; }
  StepCost Cost() const;
  // Copy `expert` onto `rank` / remove that copy; rank must (not) hold it.
  void AddCopy(int64_t expert, int64_t rank, Routing routing = Routing::kSplit);
  void RemoveCopy(int64_t expert, int64_t rank, Routing routing = Routing::kSplit);
  // Replaces the copies of `expert` (ascending ranks, owner excluded).
  void SetCopies(int64_t expert, const std::vector<int32_t>& copies, Routing routing = Routing::kSplit);
  // Copies onto every rank that lacks it (split rule: every source keeps its rows).
  void Shadow(int64_t expert);
  // The predicted total if `expert` had these copies instead, without
  // changing the state: one pass over the expert's sources and the ranks, no
  // allocation once the buffers have grown.
  double Try(int64_t expert, const std::vector<int32_t>& copies, Routing routing = Routing::kSplit);
  // After Try: rows that would leave their source rank in one exchange, minus today's.
  int64_t TriedOffRankDelta() const { return tried_off_rank_delta_; }
  // After Try: the rows `rank` would compute (set the rank with Watch, -1: none).
  void Watch(int64_t rank) { watch_ = rank; }
  int64_t TriedWatchedRows() const { return tried_watch_rows_; }
  // After Try(expert, copies, kBalanced) with copies: keeps the routing it
  // scored in `slot` (0 or 1); AddKept(slot) then makes that edit (as
  // SetCopies with kBalanced would) without filling the quota again. No other
  // edit may come in between.
  void KeepTried(int64_t expert, const std::vector<int32_t>& copies, int slot = 0);
  void AddKept(int slot = 0);

  // AssignQuotas (quotas.h) on the state's copies: every copied expert gets
  // the water-filled quota and its rows follow it.
  void AssignQuotas(bool keep_own_rows);
  // AssignBestQuotas (quotas.h) on the state's copies; returns the prediction.
  double AssignBestQuotas();
  // Every copied expert follows a quota that covers these counts.
  bool AllQuotas();
  // The copied experts' quotas kept aside in slot 0 or 1 (AssignBestQuotas
  // uses 0) / put back, re-routing the experts whose quota differs. The state
  // must have the same copies at RestoreQuotas as at SaveQuotas.
  void SaveQuotas(int slot);
  void RestoreQuotas(int slot);
  // Gives every expert copies[e] and the quota kept in `slot` (none where
  // it kept none), one re-route per expert that differs: SetCopies on each
  // then RestoreQuotas, without routing by the split rule in between.
  // `copies` must be the state's copies at SaveQuotas(slot).
  void RestoreCopies(int slot, const std::vector<std::vector<int32_t>>& copies);

  int64_t RowsOn(int64_t rank) const { return rows_[rank]; }
  // [P] rows computed per rank.
  const std::vector<int64_t>& rows() const { return rows_; }
  // Rows that leave their source rank in one exchange.
  int64_t OffRankRows() const { return off_rank_rows_; }
  // Rank with the most rows (the compute bottleneck); lowest index on ties.
  int64_t BusiestRank() const;
  // Least-loaded rank not holding `expert`, or -1.
  int64_t IdlestNonHolder(int64_t expert) const;
  // Non-holder sending the most rows of `expert`, or -1.
  int64_t TopNonHolderSender(int64_t expert) const;
  // Copies held on `rank` (for memory budgets).
  int64_t CopiesOn(int64_t rank) const { return copies_on_[rank]; }
  // Tokens per expert over all ranks (CountMatrix::ExpertLoads, from the same pass).
  const std::vector<int64_t>& expert_loads() const { return loads_; }
  // Rows of `expert` routed to `rank` now.
  int64_t RowsOf(int64_t expert, int64_t rank);
  // One exchange's send and receive seconds of `rank`.
  double SendSeconds(int64_t rank) const;
  double RecvSeconds(int64_t rank) const;
  // Expert e's rows from each source rank ([P], cached per expert until the next Reset).
  const int64_t* Column(int64_t expert);

 private:
  struct Piece {
    int32_t src, dst;
    int64_t rows;
  };
  // Integer tallies of one rank's side of an exchange, per link class (0 intra-node, 1 inter-node).
  struct Tally {
    int64_t rows[2] = {0, 0};
    int64_t links[2] = {0, 0};
  };
  // Where the deltas of an edit go: the state itself or Try's scratch.
  struct Sink {
    int64_t* rows;
    Tally* send;
    Tally* recv;
  };

  void PlainPass();
  // expert's routes now (plain, split rule or quota) into `out`.
  void CollectRoutes(int64_t expert, std::vector<Piece>& out);
  // The split rule for `copies` into `out`.
  void SplitPieces(int64_t expert, const std::vector<int32_t>& copies, std::vector<Piece>& out);
  // Water-filled pieces for holders (owner, then copies) given base load per
  // holder; returns false when some holder's own rows exceed its share (so
  // keep_own_rows would differ). Fills targets_.
  bool BalancedPieces(int64_t expert, const int32_t* holders, int64_t n, const int64_t* base, bool keep_own_rows,
                      std::vector<Piece>& out);
  // Adds sign * pieces to the sink, keeping link_ (on/off) current.
  void Apply(const std::vector<Piece>& pieces, int64_t sign, const Sink& sink);
  // link_ alone: sign * pieces (Try's undo; its deltas are zeroed instead).
  void Relink(const std::vector<Piece>& pieces, int64_t sign);
  void ApplyBroadcast(int64_t expert, int64_t rank, int64_t sign, int64_t* send, int64_t* recv);
  // Sets the plan's quota of `expert` from pieces (sorted by source, holders ascending, merged).
  void StoreQuota(int64_t expert, const std::vector<Piece>& pieces);
  void Reroute(int64_t expert, const std::vector<int32_t>& copies, Routing routing);
  // Removes the expert's routes and copies' broadcasts from the state and sets
  // `copies` (broadcasts counted); the caller routes its rows again.
  void ReplaceCopies(int64_t expert, const std::vector<int32_t>& copies);
  // Takes `expert`'s rows off every rank (the plan keeps its copies; Cost()
  // means nothing until they are routed again).
  void Unroute(int64_t expert);
  double ChooseQuotas();
  // AssignQuotas' parts: copied_ in fill order; a rank's holders into holders_;
  // the fill on rows alone (rows_ excluding the copied experts' rows, left so)
  // into fill, flat in copied_ and holder order; fill added to rows_; the
  // pieces, quotas and routes of a fill.
  void SortCopied();
  void Holders(int64_t expert);
  void FillCopied(bool keep_own_rows, std::vector<int64_t>& fill);
  void AddFilled(const std::vector<int64_t>& fill, int64_t sign);
  void RouteFilled(const std::vector<int64_t>& fill);
  bool FillTargets(int64_t expert, const int32_t* holders, int64_t n, const int64_t* base, bool keep_own_rows,
                   int64_t* targets);
  void PiecesFromTargets(int64_t expert, const int32_t* holders, int64_t n, const int64_t* targets,
                         std::vector<Piece>& out);
  // The cost with Try's deltas added when with_trial.
  StepCost Totals(bool with_trial);
  double TallySeconds(const Tally& t) const {
    return static_cast<double>(t.links[0]) * lat_[0] + static_cast<double>(t.rows[0]) * row_s_[0] +
           static_cast<double>(t.links[1]) * lat_[1] + static_cast<double>(t.rows[1]) * row_s_[1];
  }
  int Class(int64_t a, int64_t b) const { return node_[a] == node_[b] ? 0 : 1; }

  const CostModel& model_;
  const CountMatrix* counts_ = nullptr;
  Plan plan_;
  int64_t P_ = 0, E_ = 0;
  bool contiguous_owners_ = true;     // owner[e] == e / (E / P)
  std::vector<int64_t> rows_;         // [P] rows computed per rank
  std::vector<int64_t> link_;         // [P * P] rows from -> to (0 on the diagonal)
  int64_t off_rank_rows_ = 0;         // sum of link_
  std::vector<Tally> send_, recv_;    // [P] one exchange
  std::vector<int64_t> bsend_, brecv_;  // [2 * P] copies' weights sent / received per class
  std::vector<int64_t> copies_on_;
  std::vector<int64_t> loads_;
  std::vector<int32_t> node_;         // node of each rank
  double lat_[2], row_s_[2], expert_s_[2];
  std::vector<char> routed_;          // [E] whether the expert's rows are on the tallies (Unroute)
  std::vector<int32_t> column_at_;    // [E] offset of the cached column in columns_, or -1
  std::vector<int64_t> columns_;
  // Scratch (Try and edits).
  std::vector<Piece> old_, new_, alt_;
  std::vector<int64_t> d_rows_, d_bsend_, d_brecv_;
  std::vector<Tally> d_send_, d_recv_;
  std::vector<int32_t> holders_, order_, edit_, holder_index_;
  std::vector<int64_t> base_, targets_, left_, need_, own_, holder_rows_;
  std::vector<int32_t> piece_count_, copied_;
  std::vector<int64_t> fill_[2];
  std::vector<int64_t> pass_[4];  // PlainPass: rows and links received, all and intra-node
  std::vector<int32_t> saved_experts_[2];
  std::vector<Quota> saved_quotas_[2];
  bool saved_done_[2] = {false, false};
  double saved_seconds_[2] = {0, 0};
  int64_t tried_off_rank_delta_ = 0;
  int64_t watch_ = -1, tried_watch_rows_ = 0;
  bool tried_alt_ = false;  // Try's best was the fill that keeps holders' own rows
  int64_t kept_expert_[2] = {-1, -1};
  std::vector<int32_t> kept_copies_[2];
  std::vector<Piece> kept_[2];
  // AssignBestQuotas' result, until the next edit.
  bool best_quotas_done_ = false;
  double best_quotas_seconds_ = 0;
  int64_t off_rank_delta_ = 0;  // Apply's running change of off-rank rows
};

}  // namespace dynamoe::placement
