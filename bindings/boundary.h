// The exported ops' error boundary: a dynamoe::Error becomes a c10::Error
// carrying the full dynamoe message (Python then sees RuntimeError with it).
#pragma once

#include <c10/util/Exception.h>

#include "common/status.h"

namespace dynamoe::ops {

template <typename F>
auto Boundary(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    TORCH_CHECK(false, e.what());
  }
}

}  // namespace dynamoe::ops
