// The routing trace: what DYNAMOE_TRACE records per step and layer (count
// matrices, the plan, phase timings) and what dynamoe-replay reads. The byte
// layout is docs/trace-format.md; this header is its in-memory form, the
// encoder the recorder uses and the reader. Pure C++ (no torch).
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "placement/count_matrix.h"
#include "placement/plan.h"

namespace dynamoe::placement {

// The version the encoders write; the reader also reads version 1.
constexpr uint32_t kTraceVersion = 2;

// Limits every reader, importer and generator enforces, so that no input makes
// them allocate without bound or overflow a sum (docs/trace-format.md).
constexpr int64_t kMaxMatrixCells = int64_t{1} << 24;  // world x experts of one count matrix
constexpr int64_t kMaxStepTotal = int64_t{1} << 40;    // sum of one count matrix (re-homed x4096 stays < 2^63)
constexpr int64_t kMaxImportCells = int64_t{1} << 27;  // all matrices of one imported (CSV/JSONL) trace
constexpr int64_t kMaxImportIndex = int64_t{1} << 20;  // rank and expert indices of imported entries

struct TraceLayerSpec {
  std::string name;
  int64_t num_experts = 0;
  int64_t d_model = 0;
  int64_t d_hidden = 0;
  bool gated = false;
  bool bias = false;
  int64_t bytes_per_element = 4;
};

struct TraceStep {
  int64_t step = 0;
  int64_t layer = 0;         // index into Trace::layers
  CountMatrix kept;          // [world, experts] rows each rank sent to each expert
  CountMatrix routed;        // [world, experts] assignments before capacity
  std::optional<Plan> plan;  // absent when the step ran without a placement policy
  std::vector<double> phase_seconds;  // in Trace::phase_names order
};

// What a read skipped. A damaged region costs only the records in it: the
// reader finds the next valid frame after it; a trace that ends in a torn
// record (a crash mid-write) is read up to it.
struct TraceReadStats {
  int64_t records = 0;
  int64_t skipped_corrupt = 0;  // records lost to damage (frame starts in damaged regions, >= 1 per region)
  int64_t skipped_regions = 0;  // damaged regions the reader resynchronised over (or that ran to the end)
  int64_t skipped_bytes = 0;    // bytes not read as records: damaged regions and a torn tail
  int64_t skipped_unknown = 0;  // unknown record kind (a newer writer): skipped
  bool truncated = false;       // the last record was cut short: dropped
  std::vector<std::string> warnings;  // the first kMaxWarnings, then one line counting the rest
  static constexpr size_t kMaxWarnings = 20;
  // Adds `w` unless kMaxWarnings are held already; false when it was not added.
  bool Warn(std::string w) {
    if (warnings.size() >= kMaxWarnings) return false;
    warnings.push_back(std::move(w));
    return true;
  }
  bool damaged() const { return skipped_corrupt > 0 || skipped_bytes > 0; }
};

struct Trace {
  uint32_t version = kTraceVersion;
  int64_t world_size = 0;
  int64_t rank = 0;  // the rank that wrote it (-1: merged or imported)
  std::vector<std::string> phase_names;
  std::vector<TraceLayerSpec> layers;
  std::vector<TraceStep> steps;
  TraceReadStats stats;
};

// InvalidArgument naming `what` unless `m` has at most kMaxMatrixCells cells
// summing to at most kMaxStepTotal (checked: no sum can overflow).
absl::Status CheckCountLimits(const CountMatrix& m, const std::string& what);

// Encoders (the recorder appends their output to the file, in this order:
// header, then layer and step records).
std::string EncodeTraceHeader(int64_t world_size, int64_t rank, const std::vector<std::string>& phase_names,
                              const std::vector<TraceLayerSpec>& layers);
// `index`: the layer's number (-1: the next one), so that a reader that lost
// an earlier declaration to damage still numbers this one right.
std::string EncodeLayerRecord(const TraceLayerSpec& layer, int64_t index = -1);
std::string EncodeStepRecord(const TraceStep& step);

// Parses a whole trace. Errors (InvalidArgument / Unimplemented for an
// unknown version) name the offset and what was expected; damaged regions
// and a torn last record are skipped and reported in stats.
absl::StatusOr<Trace> ParseTrace(std::string_view bytes);
// The same over an open file, read record by record: the magic is checked
// first, and memory holds one record plus a bounded buffer. `prefix` is what
// the caller already read from `file` (e.g. to sniff the format). A read
// error or exhausted memory is an error, never a partial trace.
absl::StatusOr<Trace> ReadTrace(std::FILE* file, std::string_view prefix = {});
// Streamed read that keeps no steps: each step record goes to `sink` as it is
// read (with the trace read so far: header, layers), Trace::steps stays
// empty, and an error from the sink ends the read with it.
using TraceStepSink = std::function<absl::Status(const Trace& so_far, TraceStep step)>;
absl::StatusOr<Trace> ReadTrace(std::FILE* file, std::string_view prefix, const TraceStepSink& sink);
// ReadTrace on a path; errors name it, and each warning of stats is logged.
absl::StatusOr<Trace> ReadTraceFile(const std::string& path);

}  // namespace dynamoe::placement
