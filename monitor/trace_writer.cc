#include "monitor/trace_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace dynamoe::monitor {
namespace {

std::atomic<int64_t> process_lost{0};

std::string Errno(int err) { return absl::StrCat(std::strerror(err), " (errno ", err, ")"); }

// Writes all of `data` at `offset`; the bytes written before an error in `*done`.
int WriteAll(int fd, const std::string& data, int64_t offset, size_t* done) {
  *done = 0;
  while (*done < data.size()) {
    const ssize_t n = pwrite(fd, data.data() + *done, data.size() - *done, offset + static_cast<int64_t>(*done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    *done += static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace

int64_t ProcessTraceRecordsLost() { return process_lost.load(); }
void AddProcessTraceRecordsLost(int64_t n) { process_lost += n; }

absl::StatusOr<std::unique_ptr<TraceWriter>> TraceWriter::Open(const std::string& path, int64_t world_size,
                                                               int64_t rank,
                                                               const std::vector<std::string>& phase_names,
                                                               double flush_seconds) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return absl::UnavailableError(absl::StrCat("DYNAMOE_TRACE: cannot create '", path, "': ", Errno(errno)));
  const std::string header = placement::EncodeTraceHeader(world_size, rank, phase_names, {});
  size_t done = 0;
  if (const int err = WriteAll(fd, header, 0, &done); err != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("DYNAMOE_TRACE: cannot write '", path, "': ", Errno(err)));
  }
  return std::unique_ptr<TraceWriter>(
      new TraceWriter(path, fd, static_cast<int64_t>(header.size()), flush_seconds));
}

TraceWriter::TraceWriter(std::string path, int fd, int64_t offset, double flush_seconds)
    : path_(std::move(path)),
      fd_(fd),
      offset_(offset),
      flush_seconds_(flush_seconds < 0 ? 0 : flush_seconds),
      thread_([this] { Run(); }) {}

TraceWriter::~TraceWriter() {
  const absl::Status s = Close();
  if (!s.ok()) DYNAMOE_LOG(kError) << s.message();
}

int64_t TraceWriter::AddLayer(const placement::TraceLayerSpec& layer) {
  std::unique_lock<std::mutex> lock(mu_);
  for (size_t i = 0; i < layer_names_.size(); ++i)
    if (layer_names_[i] == layer.name) return static_cast<int64_t>(i);
  layer_names_.push_back(layer.name);
  const int64_t index = static_cast<int64_t>(layer_names_.size()) - 1;
  lock.unlock();
  Enqueue({placement::EncodeLayerRecord(layer, index), true});
  return index;
}

void TraceWriter::Append(const placement::TraceStep& step) { Enqueue({placement::EncodeStepRecord(step), false}); }

void TraceWriter::CountLost(int64_t n) {
  lost_ += n;
  AddProcessTraceRecordsLost(n);
}

void TraceWriter::Enqueue(Entry e) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closing_) {
    if (!e.layer) CountLost(1);
    return;
  }
  // Wake the thread only when it must change its wait: the queue was empty
  // (it now has a deadline) or is big enough to write now.
  const bool notify = queue_.empty() || queued_bytes_ + e.bytes.size() >= kFlushBytes;
  queued_bytes_ += e.bytes.size();
  queue_.push_back(std::move(e));
  if (notify) cv_.notify_one();
}

absl::Status TraceWriter::WriteBatch(std::deque<Entry>& batch) {
  std::string bytes;
  for (const Entry& e : batch) bytes += e.bytes;
  size_t done = 0;
  const int err = broken_ ? EBADF : WriteAll(fd_, bytes, offset_, &done);
  // Whole records written, in order; a torn one is cut off below.
  size_t whole = 0, n = 0;
  for (; n < batch.size() && whole + batch[n].bytes.size() <= done; ++n) whole += batch[n].bytes.size();
  offset_ += static_cast<int64_t>(whole);
  for (size_t i = 0; i < n; ++i) written_ += batch[i].layer ? 0 : 1;
  batch.erase(batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(n));
  if (err == 0) return absl::OkStatus();
  if (!broken_ && done > whole && ftruncate(fd_, offset_) != 0) broken_ = true;
  return absl::DataLossError(absl::StrCat("DYNAMOE_TRACE: writing '", path_, "' failed: ", Errno(err)));
}

void TraceWriter::Run() {
  using Clock = std::chrono::steady_clock;
  const auto period = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(flush_seconds_));
  std::deque<Entry> unwritten_layers;  // layer records a failed write left out, written before anything else
  bool first_error = true;
  Clock::time_point last_write{};  // at most one write per period: a record waits at most one period
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return closing_ || !queue_.empty(); });
    cv_.wait_until(lock, last_write + period, [this] { return closing_ || queued_bytes_ >= kFlushBytes; });
    last_write = Clock::now();
    std::deque<Entry> batch;
    batch.swap(queue_);
    queued_bytes_ = 0;
    const bool done = closing_;
    lock.unlock();
    while (!unwritten_layers.empty()) {
      batch.push_front(std::move(unwritten_layers.back()));
      unwritten_layers.pop_back();
    }
    absl::Status s = WriteBatch(batch);
    int64_t lost = 0;
    for (Entry& e : batch) {
      if (e.layer)
        unwritten_layers.push_back(std::move(e));
      else
        ++lost;
    }
    if (lost > 0) CountLost(lost);
    if (!s.ok() && first_error) {  // at once, not at exit: the run may last days
      first_error = false;
      DYNAMOE_LOG(kError) << s.message() << "; training continues, lost step records are counted in "
                          << "dynamoe_trace_records_lost_total";
    }
    lock.lock();
    if (!s.ok() && status_.ok()) status_ = s;
    if (done && queue_.empty()) return;
  }
}

absl::Status TraceWriter::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return status_;
    closing_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  if (!closed_) {
    closed_ = true;
    if (close(fd_) != 0 && status_.ok())
      status_ = absl::DataLossError(absl::StrCat("DYNAMOE_TRACE: closing '", path_, "' failed: ", Errno(errno)));
    if (lost_ > 0)
      status_ = absl::DataLossError(absl::StrCat(
          status_.ok() ? absl::StrCat("DYNAMOE_TRACE: '", path_, "' was closed") : std::string(status_.message()),
          "; ", lost_.load(), " of ", lost_.load() + written_.load(), " step records were not written"));
  }
  return status_;
}

}  // namespace dynamoe::monitor
