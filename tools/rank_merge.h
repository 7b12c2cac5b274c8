// The per-rank recordings of one job merged into one trace, for
// dynamoe-replay. dynamoe.trace.record under torch.distributed writes
// <base>.rank<R>.dmtrace per rank, each holding a 1-row count matrix per
// (step, layer): that rank's tokens. The merge gives a trace of world N whose
// row r is rank r's tokens.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "placement/trace.h"

namespace dynamoe::tools {

// The rank files of the recording `path` (the path given to record(); a
// ".dmtrace" suffix is dropped to form the base): rank -> file, for every
// <base>.rank<R>.dmtrace beside it. Empty when there is none.
std::map<int64_t, std::string> RankFilesOf(const std::string& path);

// Streams the files (record by record; memory holds the merged trace and one
// record) in rank order and matches their step records by (step, layer).
// Errors name the file: a missing rank (ranks must be 0..N-1), a file that
// is not a one-rank recording or names another rank, layers that differ
// from rank 0's (count, name, expert count), a (step, layer) recorded twice
// or absent from the middle of a file. A step absent after a file's last
// step (a killed job's files end at different steps) or from a damaged file
// (its record lost) is dropped with a warning naming the file instead.
// Warnings of each file name it.
absl::StatusOr<placement::Trace> MergeRankFiles(const std::map<int64_t, std::string>& files);

}  // namespace dynamoe::tools
