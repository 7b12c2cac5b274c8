#include "scheduler/expert_parallel.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstring>
#include <numeric>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/hash.h"
#include "common/status.h"

namespace dynamoe::scheduler {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What the backward pass needs to send the gradient back.
struct Exchange : torch::CustomClassHolder {
  runtime::CommunicatorPtr comm;
  std::vector<int64_t> send_rows, recv_rows;
  runtime::CollectiveTag tag;
};

at::Tensor Move(const Exchange& ex, const at::Tensor& rows, const std::vector<int64_t>& send,
                const std::vector<int64_t>& recv, const runtime::CollectiveTag& tag) {
  const int64_t total = std::accumulate(recv.begin(), recv.end(), int64_t{0});
  std::vector<int64_t> shape = rows.sizes().vec();
  shape[0] = total;
  at::Tensor out = at::empty(shape, rows.options());
  ThrowIfError(ex.comm->AllToAll(rows.contiguous(), out, send, recv, tag));
  return out;
}

class AllToAllFunction : public torch::autograd::Function<AllToAllFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& rows, c10::intrusive_ptr<Exchange> ex) {
    at::Tensor out = Move(*ex, rows, ex->send_rows, ex->recv_rows, ex->tag);
    ctx->saved_data["exchange"] = c10::IValue::make_capsule(ex);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto ex = c10::static_intrusive_pointer_cast<Exchange>(ctx->saved_data["exchange"].toCapsule());
    runtime::CollectiveTag tag = ex->tag;
    tag.backward = true;
    return {Move(*ex, grad[0], ex->recv_rows, ex->send_rows, tag), at::Tensor()};
  }
};

}  // namespace

uint64_t LayerHash(const std::string& name, int64_t num_experts, int64_t d_model, int64_t d_hidden,
                   at::ScalarType dtype) {
  return Fnv1a64(absl::StrFormat("%s/%d/%d/%d/%s", name, num_experts, d_model, d_hidden, c10::toString(dtype)));
}

absl::StatusOr<at::Tensor> AllGatherHost(runtime::Communicator& comm, const at::Tensor& mine,
                                         const at::Device& device, const runtime::CollectiveTag& tag) {
  const bool nccl = comm.backend() == "nccl";
  DYNAMOE_CHECK_ARG(!nccl || device.is_cuda(), "layer '", tag.layer, "' phase '", tag.phase,
                    "': an NCCL group needs the layer on a CUDA device, got ", device.str());
  const at::Tensor in = nccl ? mine.to(device) : mine;
  at::Tensor all = at::empty({comm.size() * mine.numel()}, in.options());
  DYNAMOE_RETURN_IF_ERROR(comm.AllGather(in, all, tag));
  return nccl ? all.cpu() : all;
}

absl::StatusOr<CountMatrices> GatherCounts(runtime::Communicator& comm, const at::Tensor& kept,
                                           const at::Tensor& routed, const std::string& layer,
                                           const at::Device& device, const std::vector<double>& figures) {
  const int64_t E = kept.numel(), P = comm.size(), F = static_cast<int64_t>(figures.size());
  at::Tensor payload = at::cat({kept.reshape({-1}), routed.reshape({-1})}).to(at::kLong);
  if (F > 0) {  // doubles as int64 bits: the all-gather copies them exactly
    at::Tensor bits = at::empty({F}, at::TensorOptions().dtype(at::kLong));
    std::memcpy(bits.data_ptr<int64_t>(), figures.data(), F * sizeof(double));
    payload = at::cat({payload, bits});
  }
  at::Tensor gathered;
  DYNAMOE_ASSIGN_OR_RETURN(gathered, AllGatherHost(comm, payload, device,
                                                   {layer, monitor::PhaseName(monitor::Phase::kCountAllGather), false}));
  gathered = gathered.view({P, 2 * E + F});
  CountMatrices m{gathered.narrow(1, 0, E).contiguous(), gathered.narrow(1, E, E).contiguous(), {}};
  if (F > 0) {
    const at::Tensor bits = gathered.narrow(1, 2 * E, F).contiguous();
    m.figures.resize(P * F);
    std::memcpy(m.figures.data(), bits.data_ptr<int64_t>(), P * F * sizeof(double));
  }
  return m;
}

namespace {
PlanOverride& PlanOverrideSlot() {
  static PlanOverride* slot = new PlanOverride();
  return *slot;
}
}  // namespace

void SetPlanOverrideForTesting(PlanOverride override) { PlanOverrideSlot() = std::move(override); }

void OverridePlanForTesting(const std::string& layer, const at::Tensor& kept_matrix, placement::Plan& plan) {
  const PlanOverride& override = PlanOverrideSlot();
  if (!override) return;
  override(layer, ToCountMatrix(kept_matrix), plan);
  ThrowIfError(plan.Validate());
}

absl::Status CheckPlanAgreement(runtime::Communicator& comm, uint64_t plan_hash, const std::string& layer,
                                int64_t step, const at::Device& device) {
  int64_t bits;
  std::memcpy(&bits, &plan_hash, sizeof(bits));
  const at::Tensor mine = at::full({1}, bits, at::TensorOptions().dtype(at::kLong));
  at::Tensor all;
  DYNAMOE_ASSIGN_OR_RETURN(all, AllGatherHost(comm, mine, device,
                                              {layer, monitor::PhaseName(monitor::Phase::kPolicy), false}));
  const int64_t* h = all.data_ptr<int64_t>();
  std::vector<std::string> differ;
  for (int64_t r = 0; r < comm.size(); ++r)
    if (h[r] != bits)
      differ.push_back(absl::StrFormat("rank %d (world rank %d) has %016x", r, comm.global_rank(static_cast<int>(r)),
                                       static_cast<uint64_t>(h[r])));
  if (differ.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrFormat(
      "layer '%s' phase 'policy' step %d: ranks computed different placement plans: rank %d has %016x, %s; "
      "the policy must see the same counts and configuration on every rank",
      layer, step, comm.rank(), plan_hash, absl::StrJoin(differ, ", ")));
}

at::Tensor AllToAllRows(const at::Tensor& rows, const runtime::CommunicatorPtr& comm,
                        const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows,
                        const runtime::CollectiveTag& tag) {
  auto ex = c10::make_intrusive<Exchange>();
  ex->comm = comm;
  ex->send_rows = send_rows;
  ex->recv_rows = recv_rows;
  ex->tag = tag;
  return AllToAllFunction::apply(rows, ex);
}

}  // namespace dynamoe::scheduler
