#include "scheduler/expert_parallel.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstring>
#include <numeric>

#include "absl/strings/str_format.h"
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

uint64_t LayerHash(const std::string& name, int64_t num_experts, int64_t d_model) {
  return Fnv1a64(absl::StrFormat("%s/%d/%d", name, num_experts, d_model));
}

absl::StatusOr<CountMatrices> GatherCounts(runtime::Communicator& comm, const at::Tensor& kept,
                                           const at::Tensor& routed, const std::string& layer,
                                           uint64_t layer_hash, int64_t step) {
  const int64_t E = kept.numel(), P = comm.size();
  at::Tensor payload = at::empty({2 * E + 2}, kept.options().dtype(at::kLong));
  payload.narrow(0, 0, E).copy_(kept);
  payload.narrow(0, E, E).copy_(routed);
  int64_t hash_bits;
  std::memcpy(&hash_bits, &layer_hash, sizeof(hash_bits));
  payload[2 * E] = hash_bits;
  payload[2 * E + 1] = step;
  at::Tensor gathered = at::empty({P * (2 * E + 2)}, payload.options());
  runtime::CollectiveTag tag{layer, monitor::PhaseName(monitor::Phase::kCountAllGather), false};
  DYNAMOE_RETURN_IF_ERROR(comm.AllGather(payload, gathered, tag));
  gathered = gathered.view({P, 2 * E + 2});
  const int64_t* g = gathered.data_ptr<int64_t>();
  for (int64_t r = 0; r < P; ++r) {
    const int64_t their_hash = g[r * (2 * E + 2) + 2 * E], their_step = g[r * (2 * E + 2) + 2 * E + 1];
    if (their_hash != hash_bits || their_step != step)
      return absl::FailedPreconditionError(absl::StrFormat(
          "layer '%s' phase 'count_allgather': ranks diverged: rank %d (world rank %d) is in layer hash %016x "
          "step %d while rank %d is in layer '%s' (hash %016x) step %d; every rank must call the MoE layers in "
          "the same order and the same number of times",
          layer, r, comm.global_rank(static_cast<int>(r)), static_cast<uint64_t>(their_hash), their_step,
          comm.rank(), layer, layer_hash, step));
  }
  return CountMatrices{gathered.narrow(1, 0, E).contiguous(), gathered.narrow(1, E, E).contiguous()};
}

ExchangePlan MakeExchangePlan(const at::Tensor& kept_matrix, int rank) {
  const int64_t P = kept_matrix.size(0), E = kept_matrix.size(1), El = E / P;
  const int64_t* c = kept_matrix.data_ptr<int64_t>();
  ExchangePlan plan;
  plan.send_rows.assign(P, 0);
  plan.recv_rows.assign(P, 0);
  plan.local_counts = at::zeros({El}, kept_matrix.options());
  int64_t* local = plan.local_counts.data_ptr<int64_t>();
  for (int64_t j = 0; j < P; ++j)
    for (int64_t l = 0; l < El; ++l) {
      plan.send_rows[j] += c[rank * E + j * El + l];
      plan.recv_rows[j] += c[j * E + rank * El + l];
      local[l] += c[j * E + rank * El + l];
    }
  if (El == 1 || P == 1) return plan;  // arrival order is already expert-major
  // Arrivals are source-major (source j: its rows for my experts in order);
  // the experts want them expert-major.
  const int64_t total = std::accumulate(plan.recv_rows.begin(), plan.recv_rows.end(), int64_t{0});
  plan.to_expert_major = at::empty({total}, kept_matrix.options());
  int64_t* perm = plan.to_expert_major.data_ptr<int64_t>();
  std::vector<int64_t> source_start(P, 0);
  for (int64_t j = 1; j < P; ++j) source_start[j] = source_start[j - 1] + plan.recv_rows[j - 1];
  int64_t out = 0;
  for (int64_t l = 0; l < El; ++l)
    for (int64_t j = 0; j < P; ++j) {
      int64_t start = source_start[j];
      for (int64_t l2 = 0; l2 < l; ++l2) start += c[j * E + rank * El + l2];
      for (int64_t k = 0; k < c[j * E + rank * El + l]; ++k) perm[out++] = start + k;
    }
  plan.to_source_major = at::empty_like(plan.to_expert_major);
  int64_t* inv = plan.to_source_major.data_ptr<int64_t>();
  for (int64_t i = 0; i < total; ++i) inv[perm[i]] = i;
  return plan;
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
