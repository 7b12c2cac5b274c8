// Routing statistics from elsewhere into the trace's in-memory form, and
// back out as CSV: dynamoe-replay's inputs besides the binary format.
#pragma once

#include <iosfwd>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "placement/trace.h"

namespace dynamoe::placement {

// CSV "step,layer,rank,expert,count" (a header line, then one line per
// entry; layers by name). Import builds kept == routed matrices; export
// writes every entry of the kept matrices, zeros included.
absl::StatusOr<Trace> ImportCountsCsv(std::string_view text);
std::string ExportCountsCsv(const Trace& trace);
void ExportCountsCsv(const Trace& trace, std::ostream& out);  // row by row, for big traces
// JSONL of per-token routing, one token per line:
// {"step": 3, "layer": "moe0", "experts": [5, 1], "rank": 0}  ("rank" optional, 0).
absl::StatusOr<Trace> ImportRoutingJsonl(std::string_view text);

}  // namespace dynamoe::placement
