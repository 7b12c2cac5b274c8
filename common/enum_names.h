// Enums whose values have fixed names (placement policy, schedule, GEMM
// algorithm, ...): one array per enum is the only list of its names, and
// gives parsing, printing, the configuration table's choices and the
// "expected one of" message.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace dynamoe {

// names[i] names the enumerator whose value is i.
template <typename E, size_t N>
class EnumNames {
 public:
  constexpr explicit EnumNames(std::array<absl::string_view, N> names) : names_(names) {}

  absl::string_view Name(E e) const {
    const size_t i = static_cast<size_t>(e);
    return i < N ? names_[i] : absl::string_view("?");
  }
  std::vector<std::string> List() const { return std::vector<std::string>(names_.begin(), names_.end()); }
  std::string Joined() const { return absl::StrJoin(names_, ", "); }  // "a, b, c"
  // Exact match; else InvalidArgument `<what> "<s>"; expected one of a, b, c`.
  absl::StatusOr<E> Parse(absl::string_view s, absl::string_view what) const {
    for (size_t i = 0; i < N; ++i)
      if (names_[i] == s) return static_cast<E>(i);
    return absl::InvalidArgumentError(absl::StrCat(what, " \"", s, "\"; expected one of ", Joined()));
  }

 private:
  std::array<absl::string_view, N> names_;
};

}  // namespace dynamoe
