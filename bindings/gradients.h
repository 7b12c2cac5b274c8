// Gradient reduction for data-parallel copies of MoE layers.
//
// After backward, an expert's gradient on its owner already sums the
// contributions of every token of its EP group (the all-to-all carried
// them). To match data-parallel training of the whole layer with the loss
// averaged over ranks:
//   - expert parameters (w1, w2, w3, b1, b2, custom experts) are summed over
//     the expert-data-parallel group (ranks holding the same experts),
//   - every other parameter (gate, residual MLP, the rest of the model) is
//     summed over the world,
// and both are divided by the world size.
#pragma once

#include <torch/nn/module.h>

#include "runtime/rendezvous.h"

namespace dynamoe {

// Call on every rank after backward, before the optimizer step. Parameters
// without a gradient get a zero one (every rank must reduce the same set).
void ReduceGradients(torch::nn::Module& model, const runtime::ParallelGroups& groups);

// True for the parameters ReduceGradients sums over the expert-DP group.
bool IsExpertParameter(torch::nn::Module& model, const torch::Tensor& parameter);

}  // namespace dynamoe
