// FNV-1a 64: the stable hash dynamoe compares across ranks (configuration,
// layer identity). Same input, same value, on every host and build.
#pragma once

#include <cstdint>

#include "absl/strings/string_view.h"

namespace dynamoe {

inline uint64_t Fnv1a64(absl::string_view bytes) {
  uint64_t h = 1469598103934665603ull;
  for (char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace dynamoe
