// The device seam (scheduler/device_ops.h): which devices have kernels, the
// error for one without, and the CPU implementation against autograd.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "common/status.h"
#include "scheduler/device_ops.h"
#include "scheduler/router.h"

namespace dynamoe::scheduler {
namespace {

TEST(DeviceOps, TheCpuHasKernelsAndOtherDevicesAreNamedInTheError) {
  EXPECT_EQ(FindDeviceOps(c10::Device(c10::kCPU)), &CpuOps());
  EXPECT_EQ(FindDeviceOps(c10::Device(c10::kMeta)), nullptr);
  const at::Tensor meta = at::empty({4, 8}, at::TensorOptions().device(c10::kMeta));
  try {
    OpsFor(meta);
    FAIL() << "no error for a meta tensor";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a tensor is on meta"), std::string::npos) << e.what();
  }
  RouterOptions o;
  o.name = "seam";
  const auto routed = Route(meta, at::empty({3, 8}, meta.options()), at::Tensor(), at::Tensor(), o);
  ASSERT_FALSE(routed.ok());
  EXPECT_NE(routed.status().message().find("seam: input is on meta"), std::string::npos) << routed.status();
}

// ActivationBackward is the derivative of ActivationForward, gated or not.
TEST(DeviceOps, CpuActivationBackwardIsTheForwardsDerivative) {
  torch::manual_seed(0);
  for (const kernels::Activation act : {kernels::Activation::kGelu, kernels::Activation::kRelu,
                                        kernels::Activation::kSilu})
    for (bool gated : {false, true}) {
      const at::Tensor h = torch::randn({5, 6}, torch::kDouble).requires_grad_(true);
      const at::Tensor g = gated ? torch::randn({5, 6}, torch::kDouble).requires_grad_(true) : at::Tensor();
      const at::Tensor grad_a = torch::randn({5, 6}, torch::kDouble);
      // The reference, out of place (the ops' forward works in place: it runs without autograd).
      const std::string name(kernels::kActivationNames.Name(act));
      at::Tensor a = name == "relu" ? at::relu(h) : name == "silu" ? at::silu(h) : at::gelu(h);
      if (gated) a = a * g;
      a.backward(grad_a);
      EXPECT_TRUE(torch::equal(CpuOps().ActivationForward(h.detach(), gated ? g.detach() : g, act), a.detach()));
      const DeviceOps::ActivationGrads r = CpuOps().ActivationBackward(grad_a, h.detach(), gated ? g.detach() : g, act);
      const std::string at = name + (gated ? " gated" : "");
      EXPECT_TRUE(torch::allclose(r.grad_h, h.grad())) << at;
      EXPECT_TRUE(torch::equal(r.a, a.detach())) << at;
      EXPECT_EQ(r.grad_g.defined(), gated) << at;
      if (gated) EXPECT_TRUE(torch::allclose(r.grad_g, g.grad())) << at;
    }
}

// CombineBackward's two gradients are those of CombineRows.
TEST(DeviceOps, CpuCombineBackwardIsCombinesDerivative) {
  torch::manual_seed(1);
  const int64_t T = 6, k = 2, d = 4;
  // Rows choice-major (all first choices, then the second), token 2's second choice dropped.
  std::vector<int64_t> pos(T * k, -1);
  int64_t rows_n = 0;
  for (int64_t j = 0; j < k; ++j)
    for (int64_t t = 0; t < T; ++t)
      if (!(t == 2 && j == 1)) pos[t * k + j] = rows_n++;
  const at::Tensor position = torch::tensor(pos, torch::kLong).view({T, k});
  const at::Tensor rows = torch::randn({rows_n, d}, torch::kDouble).requires_grad_(true);
  const at::Tensor weight = torch::rand({T, k}, torch::kDouble).requires_grad_(true);
  const at::Tensor grad_out = torch::randn({T, d}, torch::kDouble);
  // The reference: the same sum written with differentiable ATen ops.
  at::Tensor ref = torch::zeros({T, d}, torch::kDouble);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t p = position[t][j].item<int64_t>();
      if (p >= 0) ref[t] += weight[t][j] * rows[p];
    }
  ref.backward(grad_out);
  const at::Tensor out = CpuOps().CombineRows(rows.detach(), weight.detach(), position);
  EXPECT_TRUE(torch::allclose(out, ref.detach()));
  const DeviceOps::CombineGrads grads = CpuOps().CombineBackward(
      grad_out, rows.detach(), weight.detach(), position, CpuOps().Assignments(position, rows_n));
  EXPECT_TRUE(torch::allclose(grads.rows, rows.grad()));
  EXPECT_TRUE(torch::allclose(grads.weight, weight.grad()));
}

}  // namespace
}  // namespace dynamoe::scheduler
