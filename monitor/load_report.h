// Human-readable expert load: one bar per expert, scaled to the busiest.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dynamoe::monitor {

// e.g. "  e0 |##########          | 1234 (31.2%)" per line; `width` bar cells.
std::string LoadBars(const std::vector<int64_t>& expert_loads, int width = 30);

}  // namespace dynamoe::monitor
