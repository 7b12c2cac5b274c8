// The expert-parallel pieces of the step: the per-step count all-gather and
// the differentiable token exchange between the ranks of an EP group.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "monitor/phases.h"
#include "runtime/communicator.h"

namespace dynamoe::scheduler {

struct CountMatrices {
  at::Tensor kept;    // [ep_size, E] int64: rows each rank sends to each expert
  at::Tensor routed;  // [ep_size, E] int64: assignments before capacity
};

// All-gathers this rank's kept and routed counts. The payload also carries a
// hash of the layer and the step, so ranks that call different layers (or
// the same layer a different number of times) get an error naming the peer.
absl::StatusOr<CountMatrices> GatherCounts(runtime::Communicator& comm, const at::Tensor& kept,
                                           const at::Tensor& routed, const std::string& layer,
                                           uint64_t layer_hash, int64_t step);

// Rows this rank sends to / receives from each rank, from the count matrix,
// with experts [r * E_local, (r + 1) * E_local) on rank r.
struct ExchangePlan {
  std::vector<int64_t> send_rows, recv_rows;
  at::Tensor to_expert_major;    // [received] index: source-major -> local-expert-major (undefined: identity)
  at::Tensor to_source_major;    // its inverse
  at::Tensor local_counts;       // [E_local] int64 rows per local expert
};
ExchangePlan MakeExchangePlan(const at::Tensor& kept_matrix, int rank);

// rows [sum send_rows, d] out, [sum recv_rows, d] in; backward sends the
// gradient back the same way.
at::Tensor AllToAllRows(const at::Tensor& rows, const runtime::CommunicatorPtr& comm,
                        const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows,
                        const runtime::CollectiveTag& tag);

// FNV-1a of the layer's name and shape, for the divergence check.
uint64_t LayerHash(const std::string& name, int64_t num_experts, int64_t d_model);

}  // namespace dynamoe::scheduler
