// Argument checks of the exported ops (torch.ops.dynamoe.*, the TorchBind
// classes). The ops are a public, piecewise API: every tensor they index
// with is checked here, so bad input becomes a RuntimeError naming the op,
// the argument, what was expected and what came, never a read past a buffer.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

namespace dynamoe::ops {

// t is defined, has `dims` dimensions and, when given, dtype.
void CheckTensor(const char* op, const char* arg, const at::Tensor& t, int64_t dims,
                 std::optional<at::ScalarType> dtype = std::nullopt);
// t has exactly `shape`.
void CheckShape(const char* op, const char* arg, const at::Tensor& t, const std::vector<int64_t>& shape);
// t is on ref's device and (unless index) has ref's dtype.
void CheckLike(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg, const at::Tensor& ref);
// position [tokens, top_k] int64: every entry is -1 (dropped) or a row in
// [0, num_rows), no row is used twice, and every row is used once.
void CheckPositions(const char* op, const at::Tensor& position, int64_t num_rows);
// counts [n] int64 >= 0 summing to num_rows.
void CheckCounts(const char* op, const at::Tensor& counts, int64_t n, int64_t num_rows);

}  // namespace dynamoe::ops
