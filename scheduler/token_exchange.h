// The sequential schedule's token exchange (DYNAMOE_SCHEDULE=sequential):
// one all-to-all each way around the experts, as a dispatch/combine handle,
// so the step reads route, plan, dispatch, experts, combine. The overlap
// schedule's counterpart is pipeline_layout.h + overlap.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "placement/plan.h"
#include "runtime/communicator.h"
#include "scheduler/row_order.h"

namespace dynamoe::scheduler {

// How this rank's rows move under a placement plan (placement::ForEachRoute
// decides which holder computes which rows: the plan's quotas for copied
// experts, which the policy sets from these very counts, so every rank cuts
// the same pieces); local counts are per slot (SlotExperts).
struct ExchangePlan {
  std::vector<int64_t> send_rows, recv_rows;  // per rank, this rank included
  at::Tensor to_dest_major;    // expert-sorted rows -> destination-major send order (undefined: identity)
  at::Tensor from_dest_major;  // its inverse
  at::Tensor to_expert_major;  // [received] source-major arrivals -> slot-major (undefined: identity)
  at::Tensor to_source_major;  // its inverse
  at::Tensor local_counts;     // [slots] int64 rows per slot
  std::vector<int64_t> slot_experts;  // global expert of each slot
};
ExchangePlan MakeExchangePlan(const at::Tensor& kept_matrix, int rank, const placement::Plan& plan);

class TokenExchange {
 public:
  // Every expert on this process: rows stay where they are.
  static TokenExchange Local(const at::Tensor& kept_counts);
  // Across `comm` (size > 1) under `plan`; `kept_matrix` is the step's
  // gathered [P, E] count matrix, the same on every rank.
  static TokenExchange Across(const at::Tensor& kept_matrix, const placement::Plan& plan,
                              runtime::CommunicatorPtr comm, std::string layer);

  // Expert-sorted rows of this rank -> the rows this rank's experts
  // compute, slot-major (differentiable: backward sends the gradient back).
  at::Tensor Dispatch(const at::Tensor& rows) const;
  // The experts' outputs, slot-major -> this rank's rows, expert-sorted.
  at::Tensor Combine(const at::Tensor& out_rows) const;
  // [slots] int64 rows per slot (SlotExperts order), on the host.
  const at::Tensor& slot_counts() const { return plan_.local_counts; }

 private:
  ExchangePlan plan_;
  runtime::CommunicatorPtr comm_;  // null: Local
  std::string layer_;
};

}  // namespace dynamoe::scheduler
