// The vocabulary of where rows go, shared by the sequential exchange
// (token_exchange.h) and the overlap pipeline (pipeline_layout.h): slots,
// permutations, and the count matrix as the placement library sees it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "placement/count_matrix.h"
#include "placement/plan.h"

namespace dynamoe::scheduler {

// The kept count matrix [P, E] int64 as the placement library's type.
placement::CountMatrix ToCountMatrix(const at::Tensor& kept_matrix);

// The experts this rank computes, by slot: its own experts
// [rank * E_local, (rank + 1) * E_local), then plan.CopiesOn(rank) ascending.
std::vector<int64_t> SlotExperts(const placement::Plan& plan, int64_t rank);

// perm, or an undefined tensor when perm is the identity; and the inverse.
at::Tensor PermutationTensor(std::vector<int64_t> perm);
at::Tensor InversePermutation(const at::Tensor& perm);

// rows[perm] along dim 0 (rows when perm is undefined). Permutations are built
// on the host; for rows on a GPU the index follows them to their device.
at::Tensor PermuteRows(const at::Tensor& rows, const at::Tensor& perm);

}  // namespace dynamoe::scheduler
