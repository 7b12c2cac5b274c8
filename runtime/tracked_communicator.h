// TrackedCommunicator: what every backend shares. It numbers each
// collective, publishes it to the peers (PeerMonitor), arms its deadline on
// the control thread, keeps the counters, and turns a failed or expired
// collective into the diagnosed error. Backends only start the operation
// and finish the PendingCollective when it completes.
#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "runtime/communicator.h"
#include "runtime/peer_monitor.h"
#include "runtime/watchdog.h"

namespace dynamoe::runtime {

class TrackedCommunicator : public Communicator {
 public:
  TrackedCommunicator(const c10::intrusive_ptr<c10d::Store>& store, GroupInfo info)
      : monitor_(store, std::move(info)) {}

  int rank() const override { return monitor_.info().rank; }
  int size() const override { return monitor_.info().size; }
  std::string backend() const override { return monitor_.info().backend; }
  std::string name() const override { return monitor_.info().name; }
  int global_rank(int group_rank) const override { return monitor_.info().global_ranks.at(group_rank); }
  CommCounters counters() const override;

 protected:
  // A collective under a deadline; on_expire runs on the control thread if
  // it expires. Null when an earlier collective of this group failed.
  std::shared_ptr<PendingCollective> Track(const char* op, const CollectiveTag& tag,
                                           std::function<void()> on_expire = nullptr);
  // The handle for `pending` (or, when null, one that refuses with a clear
  // error). `after` runs once it succeeded; `cleanup` when the handle dies;
  // `order` (GPU) makes the caller's stream wait for it (CommHandle::OrderAfter).
  std::unique_ptr<CommHandle> Handle(const char* op, const CollectiveTag& tag,
                                     std::shared_ptr<PendingCollective> pending, std::function<void()> after = nullptr,
                                     std::function<void()> cleanup = nullptr, std::function<void()> order = nullptr);
  // Adds an all-to-all's payload to other ranks to the byte counters.
  void CountAllToAll(const at::Tensor& input, const std::vector<int64_t>& send_rows,
                     const std::vector<int64_t>& recv_rows);
  bool failed() const { return failed_; }
  // A backend tore its transport down (e.g. a deadline aborted it): later
  // collectives are refused at once instead of launched on it.
  void MarkFailed() { failed_ = true; }

 private:
  friend class TrackedHandle;
  // Blocks until `pending` finished: OK, or the diagnosed error.
  absl::Status Complete(PendingCollective& pending, const std::function<void()>& after);
  // A handle stopped being in flight (waited, or dropped unwaited).
  void Retire(uint64_t seq);

  PeerMonitor monitor_;
  std::atomic<uint64_t> seq_{0};
  std::atomic<bool> failed_{false};
  mutable std::mutex counters_mu_;
  CommCounters counters_;
  std::set<uint64_t> in_flight_;  // collectives started and not yet waited (under counters_mu_)
};

}  // namespace dynamoe::runtime
