// The CPU's DeviceOps (cpu_ops.cc) and its router (router_cpu.cc).
#pragma once

#include "scheduler/device_ops.h"

namespace dynamoe::scheduler {

absl::StatusOr<Routing> RouteOnCpu(const at::Tensor& x, const at::Tensor& gate_weight, const at::Tensor& gate_bias,
                                   const at::Tensor& expert_bias, const RouterOptions& options);

}  // namespace dynamoe::scheduler
