#include "monitor/trace_recorder.h"

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "monitor/phases.h"

namespace dynamoe::monitor {

std::string TraceRecorder::PathFor(const std::string& prefix, int64_t rank) {
  return absl::StrCat(prefix, ".rank", rank, ".dmtrace");
}

void TraceRecorder::Record(const placement::TraceLayerSpec& layer, int64_t rank, placement::TraceStep step) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failed_) return;
  if (!writer_) {
    const std::vector<std::string> phases(kPhaseNames.begin(), kPhaseNames.end());
    auto w = TraceWriter::Open(PathFor(prefix_, rank), step.kept.world_size, rank, phases);
    if (!w.ok()) {
      failed_ = true;
      DYNAMOE_LOG(kError) << w.status().message() << "; no trace is recorded";
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

TraceRecorder* ProcessTraceRecorder(const std::string& prefix) {
  if (prefix.empty()) return nullptr;
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<TraceRecorder>> recorders;  // destroyed (closed) at exit
  std::lock_guard<std::mutex> lock(mu);
  auto& r = recorders[prefix];
  if (!r) r = std::make_unique<TraceRecorder>(prefix);
  return r.get();
}

}  // namespace dynamoe::monitor
