// DYNAMOE_TRACE: a recorder per process, writing
// prefix.rank<R>.dmtrace through a TraceWriter, R the process's global rank
// (data-parallel processes without an expert-parallel group would otherwise
// share one file). Opening is lazy (the first recorded step knows the rank
// and world size); a file that cannot be created is reported once and
// recording stops, the training does not; its steps count as lost.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "monitor/step_observer.h"
#include "monitor/trace_writer.h"
#include "placement/trace.h"

namespace dynamoe::monitor {

class TraceRecorder {
 public:
  TraceRecorder(std::string prefix, double flush_seconds)
      : prefix_(std::move(prefix)), flush_seconds_(flush_seconds) {}
  // The file a rank writes.
  static std::string PathFor(const std::string& prefix, int64_t rank);
  // Appends one step of `layer` (declared on first sight); `global_rank`
  // names the file.
  void Record(const placement::TraceLayerSpec& layer, int64_t global_rank, placement::TraceStep step);
  absl::Status Close();
  // Steps written so far (queued ones excluded), and lost.
  int64_t records_written();
  int64_t records_lost();

 private:
  const std::string prefix_;
  const double flush_seconds_;
  int64_t lost_unopened_ = 0;  // steps recorded while the file could not be created
  std::mutex mu_;
  std::unique_ptr<TraceWriter> writer_;
  bool failed_ = false;
  std::map<std::string, int64_t> layers_;
};

// The trace record of one step: its count matrices, its plan when a policy
// chose one, and its phase times.
placement::TraceStep TraceRecordOf(const StepStats& stats);

// Records every training step it is told of (recomputations are never told);
// the recorder closes when the observer goes.
class TraceObserver : public StepObserver {
 public:
  TraceObserver(std::string prefix, double flush_seconds) : recorder_(std::move(prefix), flush_seconds) {}
  void OnStep(const StepStats& stats) override;
  TraceRecorder& recorder() { return recorder_; }

 private:
  TraceRecorder recorder_;
};

}  // namespace dynamoe::monitor
