// The expert-parallel pieces of the step: the per-step count all-gather and
// the differentiable token exchange between the ranks of an EP group.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "monitor/phases.h"
#include "placement/plan.h"
#include "runtime/communicator.h"
#include "scheduler/row_order.h"

namespace dynamoe::scheduler {

struct CountMatrices {
  at::Tensor kept;    // [ep_size, E] int64: rows each rank sends to each expert
  at::Tensor routed;  // [ep_size, E] int64: assignments before capacity
  std::vector<double> figures;  // [ep_size * figures per rank]: every rank's `figures`, rank-major
};

// All-gathers this rank's kept and routed counts [E] into [ep_size, E]
// matrices. Call after CheckSignatures passed for this step: the payload's
// size is the layer's, so every rank must be in the same layer.
// `device` is the layer's: an NCCL group moves the payload through it.
// `figures` (DYNAMOE_CALIBRATE's phase times, the same count on every rank)
// ride along bit for bit, so calibration costs no collective of its own.
absl::StatusOr<CountMatrices> GatherCounts(runtime::Communicator& comm, const at::Tensor& kept,
                                           const at::Tensor& routed, const std::string& layer,
                                           const at::Device& device = at::Device(at::kCPU),
                                           const std::vector<double>& figures = {});

// All-gathers a small host tensor into [size * numel] on the host. NCCL moves
// device memory only, so over NCCL it travels through `device`.
absl::StatusOr<at::Tensor> AllGatherHost(runtime::Communicator& comm, const at::Tensor& mine,
                                         const at::Device& device, const runtime::CollectiveTag& tag);


// Tests only: rewrites the plan a layer's policy chose (copies, quotas)
// before the plan check, the weights' exchange and the routing, so that
// multi-process tests can force hand-made quotas. Set it before the layers
// run, from one thread; an empty function removes it.
using PlanOverride =
    std::function<void(const std::string& layer, const placement::CountMatrix& counts, placement::Plan& plan)>;
void SetPlanOverrideForTesting(PlanOverride override);
// Applies the override, if any, and validates its plan (PlacementState::Next).
void OverridePlanForTesting(const std::string& layer, const at::Tensor& kept_matrix, placement::Plan& plan);

// DYNAMOE_CHECK_PLAN: all-gathers the plan hash; FailedPrecondition naming the
// ranks whose plan differs from this rank's.
absl::Status CheckPlanAgreement(runtime::Communicator& comm, uint64_t plan_hash, const std::string& layer,
                                int64_t step, const at::Device& device = at::Device(at::kCPU));

// rows [sum send_rows, d] out, [sum recv_rows, d] in; backward sends the
// gradient back the same way.
at::Tensor AllToAllRows(const at::Tensor& rows, const runtime::CommunicatorPtr& comm,
                        const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows,
                        const runtime::CollectiveTag& tag);

// FNV-1a of the layer's name, shape and dtype: its identity in the
// divergence check and in traces.
uint64_t LayerHash(const std::string& name, int64_t num_experts, int64_t d_model, int64_t d_hidden,
                   at::ScalarType dtype);

}  // namespace dynamoe::scheduler
