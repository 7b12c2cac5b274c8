// The CPU's DeviceOps (cpu_ops.cc) and its router (router_cpu.cc).
#pragma once

#include "scheduler/device_ops.h"

namespace dynamoe::scheduler {

// act(h) by ATen, on any device: the CPU ops' activation and the residual MLP's.
at::Tensor Activate(const at::Tensor& h, kernels::Activation activation);

absl::StatusOr<Routing> RouteOnCpu(const at::Tensor& x, const at::Tensor& gate_weight, const at::Tensor& gate_bias,
                                   const at::Tensor& expert_bias, const RouterOptions& options);

}  // namespace dynamoe::scheduler
