#include "bindings/op_checks.h"

#include <ATen/ATen.h>

#include "absl/strings/str_join.h"
#include "common/status.h"

namespace dynamoe::ops {
namespace {

std::string Shape(const at::Tensor& t) { return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]"); }

}  // namespace

void CheckTensor(const char* op, const char* arg, const at::Tensor& t, int64_t dims,
                 std::optional<at::ScalarType> dtype) {
  DYNAMOE_THROW_IF(!t.defined(), op, ": ", arg, " is undefined; expected a ", dims, "-D tensor");
  DYNAMOE_THROW_IF(t.dim() != dims, op, ": ", arg, " must be ", dims, "-D, got shape ", Shape(t));
  if (dtype.has_value())
    DYNAMOE_THROW_IF(t.scalar_type() != *dtype, op, ": ", arg, " must be ", c10::toString(*dtype), ", got ",
                     c10::toString(t.scalar_type()));
}

void CheckShape(const char* op, const char* arg, const at::Tensor& t, const std::vector<int64_t>& shape) {
  DYNAMOE_THROW_IF(!t.defined() || t.sizes().vec() != shape, op, ": ", arg, " must have shape [",
                   absl::StrJoin(shape, ", "), "], got ", t.defined() ? Shape(t) : std::string("undefined"));
}

void CheckLike(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg, const at::Tensor& ref) {
  DYNAMOE_THROW_IF(t.device() != ref.device(), op, ": ", arg, " is on ", t.device().str(), " but ", ref_arg,
                   " is on ", ref.device().str());
  DYNAMOE_THROW_IF(t.scalar_type() != ref.scalar_type(), op, ": ", arg, " has dtype ",
                   c10::toString(t.scalar_type()), " but ", ref_arg, " has dtype ", c10::toString(ref.scalar_type()));
}

void CheckPositions(const char* op, const at::Tensor& position, int64_t num_rows) {
  CheckTensor(op, "position", position, 2, at::kLong);
  const at::Tensor p = position.cpu().contiguous();
  const int64_t* v = p.data_ptr<int64_t>();
  std::vector<int64_t> user(num_rows, -1);
  int64_t kept = 0;
  for (int64_t a = 0; a < p.numel(); ++a) {
    if (v[a] == -1) continue;
    DYNAMOE_THROW_IF(v[a] < -1 || v[a] >= num_rows, op, ": position[", a / p.size(1), ", ", a % p.size(1),
                     "] = ", v[a], " is outside [-1, ", num_rows, ") (-1: dropped; else a row of the ", num_rows,
                     " rows)");
    DYNAMOE_THROW_IF(user[v[a]] != -1, op, ": row ", v[a], " is named by position entries ", user[v[a]], " and ",
                     a, " (flattened); each row belongs to exactly one assignment");
    user[v[a]] = a;
    ++kept;
  }
  DYNAMOE_THROW_IF(kept != num_rows, op, ": position names ", kept, " rows but there are ", num_rows,
                   "; every row must belong to one assignment");
}

void CheckCounts(const char* op, const at::Tensor& counts, int64_t n, int64_t num_rows) {
  CheckTensor(op, "counts", counts, 1);
  DYNAMOE_THROW_IF(counts.scalar_type() != at::kLong && counts.scalar_type() != at::kInt, op,
                   ": counts must be int64 or int32, got ", c10::toString(counts.scalar_type()));
  DYNAMOE_THROW_IF(counts.size(0) != n, op, ": counts must have one entry per expert (", n, "), got ",
                   counts.size(0));
  const at::Tensor c = counts.to(at::kCPU, at::kLong).contiguous();
  const int64_t* v = c.data_ptr<int64_t>();
  int64_t sum = 0;
  for (int64_t e = 0; e < n; ++e) {
    DYNAMOE_THROW_IF(v[e] < 0 || v[e] > num_rows, op, ": counts[", e, "] = ", v[e], " is outside [0, ", num_rows,
                     "]");
    sum += v[e];
  }
  DYNAMOE_THROW_IF(sum != num_rows, op, ": counts sum to ", sum, " but rows has ", num_rows, " rows");
}

}  // namespace dynamoe::ops
