// The one error header of dynamoe.
//
// Two tiers (DESIGN.md): inside the core, functions return absl::Status or
// absl::StatusOr<T>; at the API boundary (C++ module, torch ops, CLIs) a
// non-OK status becomes a dynamoe::Error carrying the full message.
// The CUDA checks live here too, as macros only: no CUDA header is included.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace dynamoe {

// Thrown at the API boundary. what() is the status message prefixed by its
// code, e.g. "INVALID_ARGUMENT: moe: x must be 2-D or more, got [4]".
class Error : public std::runtime_error {
 public:
  explicit Error(const absl::Status& status)
      : std::runtime_error(Describe(status)), code_(status.code()) {}
  absl::StatusCode code() const { return code_; }

  static std::string Describe(const absl::Status& status) {
    return absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message());
  }

 private:
  absl::StatusCode code_;
};

inline void ThrowIfError(const absl::Status& status) {
  if (!status.ok()) throw Error(status);
}

template <typename T>
T ValueOrThrow(absl::StatusOr<T> value) {
  if (!value.ok()) throw Error(value.status());
  return *std::move(value);
}

}  // namespace dynamoe

#define DYNAMOE_CONCAT_INNER_(a, b) a##b
#define DYNAMOE_CONCAT_(a, b) DYNAMOE_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when it is not OK.
#define DYNAMOE_RETURN_IF_ERROR(expr)               \
  do {                                              \
    ::absl::Status dynamoe_status_ = (expr);        \
    if (!dynamoe_status_.ok()) return dynamoe_status_; \
  } while (0)

// `DYNAMOE_ASSIGN_OR_RETURN(auto v, MakeV());`
#define DYNAMOE_ASSIGN_OR_RETURN(lhs, expr) \
  DYNAMOE_ASSIGN_OR_RETURN_IMPL_(DYNAMOE_CONCAT_(dynamoe_statusor_, __LINE__), lhs, expr)
#define DYNAMOE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return tmp.status();                  \
  lhs = *std::move(tmp)

// Returns InvalidArgument with the concatenated message when cond is false.
// The message should say what was expected and what came.
#define DYNAMOE_CHECK_ARG(cond, ...)                                   \
  do {                                                                 \
    if (!(cond)) return ::absl::InvalidArgumentError(::absl::StrCat(__VA_ARGS__)); \
  } while (0)

// Throws dynamoe::Error(InvalidArgument) at the API boundary.
#define DYNAMOE_THROW_IF(cond, ...)                                                    \
  do {                                                                                 \
    if (cond) throw ::dynamoe::Error(::absl::InvalidArgumentError(::absl::StrCat(__VA_ARGS__))); \
  } while (0)

// CUDA runtime calls and kernel launches (every launch is checked). The
// expanding file includes <cuda_runtime.h>; this header stays CUDA-free.
#define DYNAMOE_CUDA_RETURN_IF_ERROR(expr)                                             \
  do {                                                                                 \
    cudaError_t dynamoe_err_ = (expr);                                                 \
    if (dynamoe_err_ != cudaSuccess)                                                   \
      return ::absl::InternalError(::absl::StrCat(#expr, " failed: ",                  \
                                                  cudaGetErrorString(dynamoe_err_)));  \
  } while (0)

#define DYNAMOE_CUDA_CHECK_LAUNCH() DYNAMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError())
