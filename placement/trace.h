// The routing trace: what DYNAMOE_TRACE records per step and layer (count
// matrices, the plan, phase timings) and what dynamoe-replay reads. The byte
// layout is docs/trace-format.md; this header is its in-memory form, the
// encoder the recorder uses and the reader. Pure C++ (no torch).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "placement/count_matrix.h"
#include "placement/plan.h"

namespace dynamoe::placement {

constexpr uint32_t kTraceVersion = 1;

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

// Why a read stopped early or skipped something; a trace that ends in a torn
// record (a crash mid-write) is still read up to it.
struct TraceReadStats {
  int64_t records = 0;
  int64_t skipped_corrupt = 0;  // checksum mismatch: skipped
  int64_t skipped_unknown = 0;  // unknown record kind (a newer writer): skipped
  bool truncated = false;       // the last record was cut short: dropped
  std::vector<std::string> warnings;
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

// Encoders (the recorder appends their output to the file, in this order:
// header, then layer and step records).
std::string EncodeTraceHeader(int64_t world_size, int64_t rank, const std::vector<std::string>& phase_names,
                              const std::vector<TraceLayerSpec>& layers);
std::string EncodeLayerRecord(const TraceLayerSpec& layer);
std::string EncodeStepRecord(const TraceStep& step);

// Parses a whole trace. Errors (InvalidArgument / Unimplemented for an
// unknown version) name the offset and what was expected; a torn last record
// or a record with a bad checksum is skipped and reported in stats.
absl::StatusOr<Trace> ParseTrace(std::string_view bytes);
// ParseTrace over a file; logs each warning of stats.
absl::StatusOr<Trace> ReadTraceFile(const std::string& path);

// CSV "step,layer,rank,expert,count" (a header line, then one line per
// entry; layers by name). Import builds kept == routed matrices; export
// writes every entry of the kept matrices, zeros included.
absl::StatusOr<Trace> ImportCountsCsv(std::string_view text);
std::string ExportCountsCsv(const Trace& trace);
// JSONL of per-token routing, one token per line:
// {"step": 3, "layer": "moe0", "experts": [5, 1], "rank": 0}  ("rank" optional, 0).
absl::StatusOr<Trace> ImportRoutingJsonl(std::string_view text);

}  // namespace dynamoe::placement
