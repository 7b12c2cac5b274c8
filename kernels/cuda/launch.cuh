// Grid size of the grid-stride launchers.
#pragma once

#include <cstdint>

namespace dynamoe::kernels::cuda {
// Blocks to cover n items at `threads` per block: at least 1 (a zero-size
// launch is an error) and at most 65535 * 16 (the kernels stride past it).
inline unsigned BlocksFor(int64_t n, unsigned threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);
}
}  // namespace dynamoe::kernels::cuda
