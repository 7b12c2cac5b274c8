#include "scheduler/row_order.h"

#include <ATen/ATen.h>

#include <utility>

#include "common/status.h"

namespace dynamoe::scheduler {

placement::CountMatrix ToCountMatrix(const at::Tensor& kept_matrix) {
  const at::Tensor c = kept_matrix.contiguous();
  std::vector<int64_t> v(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
  return ValueOrThrow(placement::CountMatrix::Make(c.size(0), c.size(1), std::move(v)));
}

std::vector<int64_t> SlotExperts(const placement::Plan& plan, int64_t rank) {
  const int64_t El = plan.experts_per_rank();
  std::vector<int64_t> slots;
  for (int64_t l = 0; l < El; ++l) slots.push_back(rank * El + l);
  for (int64_t e : plan.CopiesOn(rank)) slots.push_back(e);
  return slots;
}

at::Tensor PermutationTensor(std::vector<int64_t> perm) {
  bool identity = true;
  for (size_t i = 0; i < perm.size() && identity; ++i) identity = perm[i] == static_cast<int64_t>(i);
  if (identity) return at::Tensor();
  return at::tensor(perm, at::TensorOptions().dtype(at::kLong));
}

at::Tensor InversePermutation(const at::Tensor& perm) {
  if (!perm.defined()) return perm;
  at::Tensor inv = at::empty_like(perm);
  const int64_t* p = perm.data_ptr<int64_t>();
  int64_t* q = inv.data_ptr<int64_t>();
  for (int64_t i = 0; i < perm.numel(); ++i) q[p[i]] = i;
  return inv;
}

at::Tensor PermuteRows(const at::Tensor& rows, const at::Tensor& perm) {
  if (!perm.defined()) return rows;
  return rows.index_select(0, perm.device() == rows.device() ? perm : perm.to(rows.device()));
}

}  // namespace dynamoe::scheduler
