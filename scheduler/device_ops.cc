#include "scheduler/device_ops.h"

#include "common/status.h"

namespace dynamoe::scheduler {

#ifndef DYNAMOE_TORCH_CUDA
// cuda_path.cc defines it when built against a torch with CUDA. Named here,
// not self-registered: a static library drops objects nothing refers to.
const DeviceOps* CudaOps() { return nullptr; }
#endif

const DeviceOps* FindDeviceOps(const c10::Device& device) {
  if (device.is_cpu()) return &CpuOps();
  if (device.is_cuda()) return CudaOps();
  return nullptr;
}

const DeviceOps& OpsFor(const at::Tensor& t) {
  const DeviceOps* ops = FindDeviceOps(t.device());
  DYNAMOE_THROW_IF(ops == nullptr, "a tensor is on ", t.device().str(), " but this dynamoe has kernels for the CPU",
                   CudaOps() != nullptr ? " and CUDA" : " only (build against a torch with CUDA for the GPU path)");
  return *ops;
}

}  // namespace dynamoe::scheduler
