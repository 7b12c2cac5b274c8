// The control thread: one Boost.Asio io_context per process that enforces
// collective deadlines (heartbeats run on their own threads: PeerMonitor). Backends complete a
// PendingCollective from their own threads; the deadline timer completes it
// with kExpired if they have not, so Wait() never blocks past the deadline.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "runtime/communicator.h"

namespace dynamoe::runtime {

using Clock = std::chrono::steady_clock;

// One collective in flight, shared by the caller, the backend's completion
// callback and the control thread. The first Finish() wins.
class PendingCollective {
 public:
  enum class State { kRunning, kDone, kFailed, kExpired };

  PendingCollective(uint64_t seq, std::string op, CollectiveTag tag, Clock::duration expire_after)
      : seq_(seq), op_(std::move(op)), tag_(std::move(tag)), start_(Clock::now()),
        expire_at_(start_ + expire_after) {}

  // Returns false if it had already finished.
  bool Finish(State state, std::string error = "");
  // Blocks until finished; returns the final state.
  State Await();

  uint64_t seq() const { return seq_; }
  const std::string& op() const { return op_; }
  const CollectiveTag& tag() const { return tag_; }
  Clock::time_point start() const { return start_; }
  Clock::time_point expire_at() const { return expire_at_; }
  std::string error() const;
  // Set by Watchdog::Arm: cancels the deadline timer once finished.
  void SetCancel(std::function<void()> cancel);

 private:
  const uint64_t seq_;
  const std::string op_;
  const CollectiveTag tag_;
  const Clock::time_point start_, expire_at_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  State state_ = State::kRunning;
  std::string error_;
  std::function<void()> cancel_timer_;
};

class Watchdog {
 public:
  // The process-wide control thread, started on first use.
  static Watchdog& Get();

  // At p's deadline, if p is still running: finish it as kExpired, then call
  // on_expire (e.g. abort an NCCL communicator) on the control thread.
  void Arm(const std::shared_ptr<PendingCollective>& p, std::function<void()> on_expire = nullptr);

  ~Watchdog();

 private:
  Watchdog();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dynamoe::runtime
