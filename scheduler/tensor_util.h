// The edge between tensors and the pointer-based kernels.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/dtype.h"

namespace dynamoe::scheduler {

// Calls f(T{}, W{}) with T the kernel element type of `dtype` and W the
// router weight type that goes with it (float, or double for double).
template <typename F>
void DispatchDataType(at::ScalarType dtype, const char* what, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{}, float{});
    case at::kDouble: return f(double{}, double{});
    case at::kBFloat16: return f(kernels::bf16{}, float{});
    case at::kHalf: return f(kernels::f16{}, float{});  // reaches the kernels on CUDA only (ValidateInputs)
    default:
      throw Error(absl::InvalidArgumentError(absl::StrCat(
          what, ": expected float32, float64, bfloat16 or float16, got ", c10::toString(dtype))));
  }
}

template <typename T>
T* Ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// Calls fn(slot, offset, rows) for each slot with rows (slot-sorted rows,
// counts[k] of slot k).
template <typename Fn>
void ForEachSlot(int64_t slots, const int64_t* counts, Fn&& fn) {
  for (int64_t k = 0, off = 0; k < slots; off += counts[k], ++k)
    if (counts[k] > 0) fn(k, off, counts[k]);
}

// Runs fn(begin, end) over [0, n) on ATen's intra-op threads.
template <typename F>
void ParallelRows(int64_t n, int64_t row_cost, F&& fn) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_cost));
  at::parallel_for(0, n, grain, fn);
}

}  // namespace dynamoe::scheduler
