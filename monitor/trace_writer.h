// The trace recorder's file side: records are encoded on the caller's thread
// (a few KiB per step and layer) and appended by one background thread, so
// the step never waits on the disk. Each batch is flushed, so a crash leaves
// a readable prefix (the reader skips a torn last record).
#pragma once

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "placement/trace.h"

namespace dynamoe::monitor {

class TraceWriter {
 public:
  // Creates (truncates) `path` and writes the header. Fails with the path
  // and the system's reason.
  static absl::StatusOr<std::unique_ptr<TraceWriter>> Open(const std::string& path, int64_t world_size, int64_t rank,
                                                           const std::vector<std::string>& phase_names);
  ~TraceWriter();  // Close(), logging an error it returns
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  // Declares a layer; returns its index for Append. The same name twice
  // returns the first index.
  int64_t AddLayer(const placement::TraceLayerSpec& layer);
  void Append(const placement::TraceStep& step);
  // Writes what is queued, flushes and stops the thread; the first write
  // error since Open, if any. Further calls return the same.
  absl::Status Close();
  const std::string& path() const { return path_; }

 private:
  TraceWriter(std::string path, std::FILE* file);
  void Enqueue(std::string bytes);
  void Run();

  const std::string path_;
  std::FILE* file_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::vector<std::string> layer_names_;
  bool closing_ = false;
  absl::Status status_;
  std::thread thread_;
};

}  // namespace dynamoe::monitor
