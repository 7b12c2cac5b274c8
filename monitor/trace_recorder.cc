#include "monitor/trace_recorder.h"

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "monitor/phases.h"

namespace dynamoe::monitor {

std::string TraceRecorder::PathFor(const std::string& prefix, int64_t rank) {
  return absl::StrCat(prefix, ".rank", rank, ".dmtrace");
}

void TraceRecorder::Record(const placement::TraceLayerSpec& layer, int64_t global_rank, placement::TraceStep step) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failed_) {
    ++lost_unopened_;
    AddProcessTraceRecordsLost(1);
    return;
  }
  if (!writer_) {
    const std::vector<std::string> phases(kPhaseNames.begin(), kPhaseNames.end());
    auto w = TraceWriter::Open(PathFor(prefix_, global_rank), step.kept.world_size, global_rank, phases,
                               flush_seconds_);
    if (!w.ok()) {
      failed_ = true;
      ++lost_unopened_;
      AddProcessTraceRecordsLost(1);
      DYNAMOE_LOG(kError) << w.status().message()
                          << "; no trace is recorded, training continues (steps counted in "
                             "dynamoe_trace_records_lost_total)";
      return;
    }
    writer_ = *std::move(w);
  }
  auto it = layers_.find(layer.name);
  if (it == layers_.end()) it = layers_.emplace(layer.name, writer_->AddLayer(layer)).first;
  step.layer = it->second;
  writer_->Append(step);
}

absl::Status TraceRecorder::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  return writer_ ? writer_->Close() : absl::OkStatus();
}

int64_t TraceRecorder::records_written() {
  std::lock_guard<std::mutex> lock(mu_);
  return writer_ ? writer_->records_written() : 0;
}

int64_t TraceRecorder::records_lost() {
  std::lock_guard<std::mutex> lock(mu_);
  return lost_unopened_ + (writer_ ? writer_->records_lost() : 0);
}

placement::TraceStep TraceRecordOf(const StepStats& s) {
  placement::TraceStep t;
  t.step = s.step;
  t.kept = s.kept;
  t.routed = s.routed;
  if (s.placed) t.plan = s.plan;
  t.phase_seconds.assign(s.times.seconds.begin(), s.times.seconds.end());
  return t;
}

void TraceObserver::OnStep(const StepStats& stats) {
  if (stats.training) recorder_.Record(stats.layer, stats.rank, TraceRecordOf(stats));
}

}  // namespace dynamoe::monitor
