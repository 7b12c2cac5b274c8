// The ranks of a job's per-rank files (Megatron's router_trace_rank{R}.jsonl,
// dynamoe.trace.record's <base>.rank<R>.dmtrace): the world size is the
// highest rank + 1, and every rank below it must have a file.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

namespace dynamoe::placement {

struct RankCoverage {
  int64_t world = 0;            // highest rank + 1 (0: no file)
  std::vector<int64_t> missing;  // ranks below it without a file: the first `listed`, for errors
};

template <class File>
RankCoverage CoverageOf(const std::map<int64_t, File>& files, size_t listed = 8) {
  RankCoverage c;
  if (files.empty()) return c;
  c.world = files.rbegin()->first + 1;
  // Stops after `listed` misses: at most files.size() + listed iterations whatever the highest rank.
  if (static_cast<int64_t>(files.size()) != c.world)
    for (int64_t r = 0; r < c.world && c.missing.size() < listed; ++r)
      if (!files.count(r)) c.missing.push_back(r);
  return c;
}

}  // namespace dynamoe::placement
