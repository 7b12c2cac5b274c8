// DYNAMOE_TRACE: one recorder per process and prefix, writing
// prefix.rank<R>.dmtrace through a TraceWriter. Opening is lazy (the first
// recorded step knows the rank and world size); a file that cannot be
// created is reported once and recording stops, the training does not.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "monitor/trace_writer.h"
#include "placement/trace.h"

namespace dynamoe::monitor {

class TraceRecorder {
 public:
  explicit TraceRecorder(std::string prefix) : prefix_(std::move(prefix)) {}
  // The file a rank writes.
  static std::string PathFor(const std::string& prefix, int64_t rank);
  // Appends one step of `layer` (declared on first sight).
  void Record(const placement::TraceLayerSpec& layer, int64_t rank, placement::TraceStep step);
  absl::Status Close();

 private:
  const std::string prefix_;
  std::mutex mu_;
  std::unique_ptr<TraceWriter> writer_;
  bool failed_ = false;
  std::map<std::string, int64_t> layers_;
};

// The process's recorder for `prefix` (created on first use, closed at exit);
// nullptr for an empty prefix.
TraceRecorder* ProcessTraceRecorder(const std::string& prefix);

}  // namespace dynamoe::monitor
