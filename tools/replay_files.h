// What `dynamoe-replay run --out-dir DIR` writes for analysis and for
// `python3 -m dynamoe.replay plot DIR` (columns in docs/replay.md):
//   summary.csv      one row per (trace, policy): the printed table
//   steps.csv        one row per (trace, policy, replayed layer-step)
//   expert_load.csv  one row per (trace, step, expert): tokens kept, summed
//                    over layers and recorded ranks (the heat map's input)
#pragma once

#include <ostream>
#include <string>

#include "placement/replay.h"
#include "placement/trace.h"

namespace dynamoe::tools {

void WriteSummaryHeader(std::ostream& out);
void WriteSummaryRows(std::ostream& out, const std::string& trace_name, const placement::ReplayReport& report);
void WriteStepsHeader(std::ostream& out);
void WriteStepsRows(std::ostream& out, const std::string& trace_name, const placement::Trace& trace,
                    const placement::ReplayReport& report);
void WriteExpertLoadHeader(std::ostream& out);
void WriteExpertLoadRows(std::ostream& out, const std::string& trace_name, const placement::Trace& trace);

}  // namespace dynamoe::tools
