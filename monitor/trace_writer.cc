#include "monitor/trace_writer.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace dynamoe::monitor {

absl::StatusOr<std::unique_ptr<TraceWriter>> TraceWriter::Open(const std::string& path, int64_t world_size,
                                                               int64_t rank,
                                                               const std::vector<std::string>& phase_names) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr)
    return absl::UnavailableError(
        absl::StrCat("DYNAMOE_TRACE: cannot create '", path, "': ", std::strerror(errno)));
  const std::string header = placement::EncodeTraceHeader(world_size, rank, phase_names, {});
  if (std::fwrite(header.data(), 1, header.size(), f) != header.size() || std::fflush(f) != 0) {
    const int err = errno;
    std::fclose(f);
    return absl::UnavailableError(absl::StrCat("DYNAMOE_TRACE: cannot write '", path, "': ", std::strerror(err)));
  }
  return std::unique_ptr<TraceWriter>(new TraceWriter(path, f));
}

TraceWriter::TraceWriter(std::string path, std::FILE* file)
    : path_(std::move(path)), file_(file), thread_([this] { Run(); }) {}

TraceWriter::~TraceWriter() {
  const absl::Status s = Close();
  if (!s.ok()) DYNAMOE_LOG(kError) << s.message();
}

int64_t TraceWriter::AddLayer(const placement::TraceLayerSpec& layer) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < layer_names_.size(); ++i)
    if (layer_names_[i] == layer.name) return static_cast<int64_t>(i);
  layer_names_.push_back(layer.name);
  queue_.push_back(placement::EncodeLayerRecord(layer));
  cv_.notify_one();
  return static_cast<int64_t>(layer_names_.size()) - 1;
}

void TraceWriter::Append(const placement::TraceStep& step) { Enqueue(placement::EncodeStepRecord(step)); }

void TraceWriter::Enqueue(std::string bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closing_) return;
  queue_.push_back(std::move(bytes));
  cv_.notify_one();
}

void TraceWriter::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return closing_ || !queue_.empty(); });
    std::deque<std::string> batch;
    batch.swap(queue_);
    const bool done = closing_;
    lock.unlock();
    absl::Status s;
    for (const std::string& b : batch)
      if (std::fwrite(b.data(), 1, b.size(), file_) != b.size()) {
        s = absl::DataLossError(absl::StrCat("DYNAMOE_TRACE: writing '", path_, "' failed: ", std::strerror(errno)));
        break;
      }
    if (s.ok() && !batch.empty() && std::fflush(file_) != 0)
      s = absl::DataLossError(absl::StrCat("DYNAMOE_TRACE: flushing '", path_, "' failed: ", std::strerror(errno)));
    lock.lock();
    if (!s.ok() && status_.ok()) status_ = s;
    if (done && queue_.empty()) return;
  }
}

absl::Status TraceWriter::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_ && !thread_.joinable()) return status_;
    closing_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
  if (file_ != nullptr) {
    if (std::fclose(file_) != 0 && status_.ok())
      status_ = absl::DataLossError(absl::StrCat("DYNAMOE_TRACE: closing '", path_, "' failed"));
    file_ = nullptr;
  }
  return status_;
}

}  // namespace dynamoe::monitor
