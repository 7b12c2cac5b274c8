// torch.classes.dynamoe.Layer and PendingStep: scheduler::Layer for Python
// (dynamoe.MoE holds one, built once; each call passes only tensors).
#pragma once

#include <torch/library.h>

namespace dynamoe::ops {

// Registers both classes; call after the Communicator and LayerState classes.
void RegisterLayerClasses(torch::Library& m);

}  // namespace dynamoe::ops
