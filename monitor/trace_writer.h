// The trace recorder's file side: records are encoded on the caller's thread
// (a few KiB per step and layer) and appended by one background thread, so
// the step never waits on the disk.
//
// The thread writes what is queued at once, but at most once per
// `flush_seconds` (sooner once kFlushBytes are queued, and at Close), with
// write(2) and no user-space buffer: a record waits at most one period, so a
// process that dies, even by _exit, loses at most the last period's records. A failed write is logged at once (path, errno) and cut
// back to the last whole record, so the file stays readable; its step
// records are counted as lost (records_lost(), ProcessTraceRecordsLost())
// and later batches are tried again (a full disk may free up). Layer
// records that failed are retried before any later step record.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "placement/trace.h"

namespace dynamoe::monitor {

// Queued bytes that make the writer write before its period ends.
constexpr size_t kFlushBytes = 1 << 20;

class TraceWriter {
 public:
  // Creates (truncates) `path` and writes the header. Fails with the path
  // and the system's reason.
  static absl::StatusOr<std::unique_ptr<TraceWriter>> Open(const std::string& path, int64_t world_size, int64_t rank,
                                                           const std::vector<std::string>& phase_names,
                                                           double flush_seconds = 1.0);
  ~TraceWriter();  // Close(), logging an error it returns
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  // Declares a layer; returns its index for Append. The same name twice
  // returns the first index.
  int64_t AddLayer(const placement::TraceLayerSpec& layer);
  void Append(const placement::TraceStep& step);
  // Writes what is queued and stops the thread; the first write error since
  // Open (with the count of lost records), if any. Further calls return the
  // same. Steps appended after Close are lost (and counted).
  absl::Status Close();
  const std::string& path() const { return path_; }
  int64_t records_written() const { return written_; }
  int64_t records_lost() const { return lost_; }

 private:
  struct Entry {
    std::string bytes;
    bool layer;  // a layer declaration, retried when lost: later steps refer to it
  };
  TraceWriter(std::string path, int fd, int64_t offset, double flush_seconds);
  void Enqueue(Entry e);
  void Run();
  // Writes `batch` at offset_; on an error cuts the file back to its last
  // whole record and returns the error.
  absl::Status WriteBatch(std::deque<Entry>& batch);
  void CountLost(int64_t n);

  const std::string path_;
  int fd_;
  int64_t offset_;  // end of the last whole record; only the thread writes it once started
  const double flush_seconds_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Entry> queue_;
  size_t queued_bytes_ = 0;
  std::vector<std::string> layer_names_;
  bool closing_ = false, closed_ = false;
  bool broken_ = false;  // the file could not be cut back: nothing more is written
  absl::Status status_;  // the first write error
  std::atomic<int64_t> written_{0}, lost_{0};
  std::thread thread_;
};

// Step records every TraceWriter and TraceRecorder of this process lost.
int64_t ProcessTraceRecordsLost();
void AddProcessTraceRecordsLost(int64_t n);

}  // namespace dynamoe::monitor
