#include "bindings/gradients.h"

#include <ATen/ATen.h>

#include <map>
#include <set>

#include "bindings/moe_layer.h"
#include "common/status.h"

namespace dynamoe {
namespace {

std::set<const void*> ExpertParameters(torch::nn::Module& model) {
  std::set<const void*> experts;
  auto add = [&](torch::nn::Module& m) {
    auto* moe = dynamic_cast<MoELayerImpl*>(&m);
    if (!moe) return;
    for (const torch::Tensor& t : {moe->w1, moe->w2, moe->w3, moe->b1, moe->b2})
      if (t.defined()) experts.insert(t.unsafeGetTensorImpl());
    if (!moe->experts.is_empty())
      for (const auto& p : moe->experts->parameters()) experts.insert(p.unsafeGetTensorImpl());
  };
  add(model);
  for (const auto& child : model.modules(/*include_self=*/false)) add(*child);
  return experts;
}

// Sums the gradients of `params` over `comm` in one flat buffer per dtype,
// then divides by `divisor`.
void SumAndScale(std::vector<torch::Tensor>& params, const runtime::CommunicatorPtr& comm, double divisor) {
  std::map<at::ScalarType, std::vector<torch::Tensor>> by_dtype;
  for (auto& p : params) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    by_dtype[p.grad().scalar_type()].push_back(p.grad());
  }
  for (auto& [dtype, grads] : by_dtype) {
    std::vector<at::Tensor> flat;
    for (const auto& g : grads) flat.push_back(g.reshape({-1}));
    at::Tensor bucket = at::cat(flat);
    if (comm && comm->size() > 1)
      ThrowIfError(comm->AllReduce(bucket, {"dynamoe", "gradients", true}));
    bucket.div_(divisor);
    int64_t offset = 0;
    for (auto& g : grads) {
      g.copy_(bucket.narrow(0, offset, g.numel()).view(g.sizes()));
      offset += g.numel();
    }
  }
}

}  // namespace

bool IsExpertParameter(torch::nn::Module& model, const torch::Tensor& parameter) {
  return ExpertParameters(model).count(parameter.unsafeGetTensorImpl()) > 0;
}

void ReduceGradients(torch::nn::Module& model, const runtime::ParallelGroups& groups) {
  torch::NoGradGuard no_grad;
  const std::set<const void*> expert_set = ExpertParameters(model);
  std::vector<torch::Tensor> expert, dense;
  for (auto& p : model.parameters()) {
    if (!p.requires_grad()) continue;
    (expert_set.count(p.unsafeGetTensorImpl()) ? expert : dense).push_back(p);
  }
  const double world = static_cast<double>(groups.world_size);
  SumAndScale(expert, groups.expert_dp, world);
  SumAndScale(dense, groups.world, world);
}

}  // namespace dynamoe
