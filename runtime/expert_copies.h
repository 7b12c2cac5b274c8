// Copies of experts on ranks other than their owner (shadowing, replicas).
// Forward: one all-to-all carries each copied expert's parameters from its
// owner to exactly the ranks the plan names. Backward: the same all-to-all in
// reverse carries the copies' gradients back, and the owner adds them to its
// own parameters' gradients in rank order, so the optimizer only ever sees
// owners' parameters and their gradients equal those of plain expert parallelism.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "placement/plan.h"
#include "runtime/communicator.h"

namespace dynamoe::runtime {

// params: this rank's expert parameters, each [experts_per_rank, ...] (w1, w2,
// ...). Returns, per parameter, [copies on this rank, ...] for the experts of
// plan.CopiesOn(rank) in that order; differentiable.
std::vector<at::Tensor> FetchCopies(const std::vector<at::Tensor>& params, const placement::Plan& plan,
                                     const CommunicatorPtr& comm, const std::string& layer);

}  // namespace dynamoe::runtime
