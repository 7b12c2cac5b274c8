// The seam between the step and the kernels of a device, in the spirit of
// ATen's DispatchStub: the autograd functions (functions.cc), the expert FFN
// (expert_ffn.cc) and the router (router.cc) are written once against this
// interface; cpu_ops.cc implements it for the CPU and cuda_path.cc for CUDA
// (compiled only against a torch with CUDA). Nothing above it branches on
// the device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/kernels.h"
#include "scheduler/routing.h"

namespace dynamoe::scheduler {

class DeviceOps {
 public:
  virtual ~DeviceOps() = default;

  // The router: logits, softmax, top-k, capacity, positions, losses (router.h).
  virtual absl::StatusOr<Routing> Route(const at::Tensor& x, const at::Tensor& gate_weight,
                                        const at::Tensor& gate_bias, const at::Tensor& expert_bias,
                                        const RouterOptions& options) const = 0;

  // Permutation. assignment[row] = t * k + j for each kept position.
  virtual at::Tensor Assignments(const at::Tensor& position, int64_t num_rows) const = 0;
  // rows[p] = x[assignment[p] / top_k].
  virtual at::Tensor GatherRows(const at::Tensor& x, const at::Tensor& assignment, int64_t top_k) const = 0;
  // out[t] = sum_j weight[t, j] rows[position[t, j]]; weight may be undefined (1).
  virtual at::Tensor CombineRows(const at::Tensor& rows, const at::Tensor& weight,
                                 const at::Tensor& position) const = 0;
  struct CombineGrads {
    at::Tensor rows, weight;
  };
  // d/d rows and d/d weight of CombineRows, given d/d out (contiguous).
  virtual CombineGrads CombineBackward(const at::Tensor& grad_out, const at::Tensor& rows, const at::Tensor& weight,
                                       const at::Tensor& position, const at::Tensor& assignment) const = 0;

  // The expert FFN's per-slot products over slot-sorted rows; counts[k] rows of slot k.
  // out[rows of k] = a[rows of k] w[k]
  virtual at::Tensor SlotProduct(const at::Tensor& a, const at::Tensor& w, const int64_t* counts) const = 0;
  // out[rows of k] (+)= a[rows of k] w[k]^T; without accumulate, out is made here.
  virtual void SlotProductT(const at::Tensor& a, const at::Tensor& w, const int64_t* counts, at::Tensor& out,
                            bool accumulate) const = 0;
  // acc[k] += a[rows of k]^T b[rows of k]; with fresh, acc[k] = ... and an
  // undefined acc is made here, shaped like param.
  virtual void AddSlotOuter(const at::Tensor& a, const at::Tensor& b, const int64_t* counts, at::Tensor& acc,
                            bool fresh, const at::Tensor& param) const = 0;
  // True when AddSlotOuter's fresh sums need no zero fill (they are made by the product).
  virtual bool MakesFreshSums() const = 0;
  // a = act(h) [* g] (g may be undefined).
  virtual at::Tensor ActivationForward(const at::Tensor& h, const at::Tensor& g,
                                       kernels::Activation activation) const = 0;
  // Back through a = act(h) [* g]: grad_h, grad_g (undefined without g) and a
  // itself for the w2 gradient. May reuse grad_a's memory: do not read it after.
  struct ActivationGrads {
    at::Tensor grad_h, grad_g, a;
  };
  virtual ActivationGrads ActivationBackward(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& g,
                                             kernels::Activation activation) const = 0;
};

// The kernels for `device`; nullptr when this build has none.
const DeviceOps* FindDeviceOps(const c10::Device& device);
// As FindDeviceOps; throws dynamoe::Error naming the device when there are none.
const DeviceOps& OpsFor(const at::Tensor& t);

// The implementations (cpu_ops.cc, cuda_path.cc).
const DeviceOps& CpuOps();
const DeviceOps* CudaOps();  // nullptr in a build without CUDA

}  // namespace dynamoe::scheduler
