// What `dynamoe-replay run --out-dir DIR` writes for analysis and for
// `python3 -m dynamoe.replay plot DIR` (columns in docs/replay.md):
//   summary.csv      one row per (trace, policy): the printed table
//   steps.csv        one row per (trace, policy, replayed layer-step)
//   expert_load.csv  one row per (trace, step, expert): tokens kept, summed
//                    over layers and recorded ranks (the heat map's input)
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "placement/trace.h"
#include "replay/replay.h"

namespace dynamoe::tools {

// What `run` and `calibrate` read: a Megatron-Core router trace directory
// (router_trace_rank{R}.jsonl files; `experts`: --experts, 0 = from the
// records), the path given to dynamoe.trace.record in a job of N ranks (no
// such file; its <base>.rank<R>.dmtrace files are merged: rank_merge.h) or a
// trace file in any form ReadAnyTraceFile reads. Messages do not repeat the
// path.
absl::StatusOr<placement::Trace> ReadReplayInput(const std::string& path, int64_t experts);
// A hint appended to a replay error of `path` ("" when none applies): the
// expert count of an imported trace that does not divide over the ranks.
std::string ReplayErrorHint(const std::string& path, const absl::Status& status);

void WriteSummaryHeader(std::ostream& out);
void WriteSummaryRows(std::ostream& out, const std::string& trace_name, const placement::ReplayReport& report);
void WriteStepsHeader(std::ostream& out);
void WriteStepsRows(std::ostream& out, const std::string& trace_name, const placement::Trace& trace,
                    const placement::ReplayReport& report);
void WriteExpertLoadHeader(std::ostream& out);
void WriteExpertLoadRows(std::ostream& out, const std::string& trace_name, const placement::Trace& trace);

}  // namespace dynamoe::tools
