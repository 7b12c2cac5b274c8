// What dynamoe-replay reads besides the engine: cluster presets and files,
// traces in any of the supported forms, and synthetic traces.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "placement/spec.h"
#include "placement/trace.h"

namespace dynamoe::placement {

// Named clusters: "default" (dynamoe's cost-model defaults: one node),
// "h100-nvlink-ib" and "a100-nvlink-ib" (8 GPUs per NVLink node over
// InfiniBand). world_size is left at 0 (the caller's or the trace's).
absl::StatusOr<ClusterSpec> ClusterPreset(const std::string& name);
std::vector<std::string> ClusterPresetNames();
// key = value lines (# comments): world_size, ranks_per_node, intra_node_bw,
// inter_node_bw, intra_node_latency_s, inter_node_latency_s, flops; keys not
// given keep `base`'s values. Errors name the line.
absl::StatusOr<ClusterSpec> ParseClusterFile(const std::string& text, ClusterSpec base);

// A trace from its bytes: the binary format (magic), CSV (a
// "step,layer,rank,expert,count" header) or JSONL (a line starting with '{').
absl::StatusOr<Trace> ParseAnyTrace(const std::string& bytes);
// The same from a file: the form is told from the first bytes (anything else
// is rejected there), a binary trace is streamed (ReadTrace), CSV and JSONL
// are read whole. A read error or exhausted memory is an error. Messages do
// not repeat the path.
absl::StatusOr<Trace> ReadAnyTraceFile(const std::string& path);

struct SynthOptions {
  int64_t steps = 200, layers = 1, experts = 16, world = 4, tokens = 1024, top_k = 2;
  double zipf = 1.2;          // popularity of the i-th hottest expert ~ 1 / i^zipf
  int64_t drift_every = 50;   // steps between moves of the hot set (0: never)
  int64_t burst_every = 0;    // every N steps one expert gets a burst (0: never)
  uint64_t seed = 0;
};
// Deterministic synthetic routing (same options, same trace): each rank's
// tokens pick top_k distinct experts by the current popularity.
// InvalidArgument naming the bounds when an option is out of range or the
// trace would exceed the count-matrix limits of trace.h.
absl::StatusOr<Trace> Synthesize(const SynthOptions& options);
// The trace in the binary format (header, layers, steps).
std::string EncodeTrace(const Trace& trace);

}  // namespace dynamoe::placement
