// Megatron-Core router traces (`--moe-routing-trace-path DIR`) into the
// trace's in-memory form, for dynamoe-replay. Megatron writes one
// `router_trace_rank{R}.jsonl` per rank, one record per (step, block, layer):
//   {"step": 0, "stage": "pre_dispatch", "block": "decoder", "layer": 3,
//    "rank": 0, "num_tokens": 128, "topk": 2, "top_indices": [[12, 45], ...]}
// (MTP heads add "mtp_idx"; sidecar fields such as hs_offset are ignored).
// docs/trace-format.md has the mapping; pure C++ (no torch).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "placement/trace.h"

namespace dynamoe::placement {

// Longest record line read (a longer one is an error naming its line).
constexpr int64_t kMaxMegatronLine = int64_t{1} << 30;

struct MegatronImportOptions {
  // Experts per layer; 0 takes the largest index seen + 1 (or a record's
  // logit_shape). Needed when no record routes to the highest expert.
  int64_t experts = 0;
};

// True when `dir` is a directory holding at least one router_trace_rank{R}.jsonl.
bool IsMegatronTraceDir(const std::string& dir);

// Streams every rank file of `dir` line by line (memory holds one line and
// the count matrices, never a file). Row r of each matrix is rank r's
// tokens; the world size is the number of rank files, which must be ranks
// 0..N-1. Layers are named "decoder.L" and "mtp<idx>.L" (other blocks
// "<block>.L"), ordered decoder first, then MTP heads (by head), then other
// blocks (by name), by layer within each. Records
// of the same (step, layer) on one rank add up (micro-batches). Records of a
// stage other than "pre_dispatch" are skipped with a warning. A bad record is
// InvalidArgument naming the file and line; a torn last line (no newline,
// not a whole record) is skipped with a warning in stats (truncated).
absl::StatusOr<Trace> ImportMegatronTraceDir(const std::string& dir, const MegatronImportOptions& options = {});

}  // namespace dynamoe::placement
