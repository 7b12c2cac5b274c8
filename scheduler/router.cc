#include "scheduler/router.h"

#include "absl/strings/str_cat.h"
#include "scheduler/device_ops.h"

namespace dynamoe::scheduler {

absl::StatusOr<Routing> Route(const at::Tensor& x, const at::Tensor& gate_weight, const at::Tensor& gate_bias,
                              const at::Tensor& expert_bias, const RouterOptions& options) {
  const DeviceOps* ops = FindDeviceOps(x.device());
  if (ops == nullptr)
    return absl::FailedPreconditionError(absl::StrCat(
        options.name, ": input is on ", x.device().str(), " but this dynamoe has no kernels for it; ",
        "rebuild against a torch with CUDA (scripts/gpu_build.sh) or move the layer to the CPU"));
  return ops->Route(x, gate_weight, gate_bias, expert_bias, options);
}

}  // namespace dynamoe::scheduler
