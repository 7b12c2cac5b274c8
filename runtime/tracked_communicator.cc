#include "runtime/tracked_communicator.h"

#include <numeric>

#include "absl/strings/str_cat.h"
#include "runtime/fault_injection.h"

namespace dynamoe::runtime {

class TrackedHandle : public CommHandle {
 public:
  TrackedHandle(c10::intrusive_ptr<TrackedCommunicator> comm, std::shared_ptr<PendingCollective> pending,
                std::function<void()> after, std::function<void()> cleanup, std::function<void()> order,
                std::string refused)
      : comm_(std::move(comm)), pending_(std::move(pending)), after_(std::move(after)),
        cleanup_(std::move(cleanup)), order_(std::move(order)), refused_(std::move(refused)) {}
  ~TrackedHandle() override {
    if (pending_ && !waited_) comm_->Retire(pending_->seq());
    if (cleanup_) cleanup_();
  }
  absl::Status Wait() override {
    if (!pending_) return absl::FailedPreconditionError(refused_);
    waited_ = true;
    return comm_->Complete(*pending_, after_);
  }
  bool OrderAfter() override {
    if (!pending_ || !order_) return false;
    order_();
    return true;
  }

 private:
  c10::intrusive_ptr<TrackedCommunicator> comm_;
  std::shared_ptr<PendingCollective> pending_;
  std::function<void()> after_, cleanup_, order_;
  std::string refused_;
  bool waited_ = false;
};

CommCounters TrackedCommunicator::counters() const {
  std::lock_guard<std::mutex> lock(counters_mu_);
  return counters_;
}

std::shared_ptr<PendingCollective> TrackedCommunicator::Track(const char* op, const CollectiveTag& tag,
                                                              std::function<void()> on_expire) {
  if (failed_) return nullptr;
  MaybeInjectFault(tag, monitor_.info().global_ranks[monitor_.info().rank]);
  auto pending = std::make_shared<PendingCollective>(++seq_, op, tag, monitor_.expire_after());
  {
    std::lock_guard<std::mutex> lock(counters_mu_);
    ++counters_.collectives;
  }
  monitor_.Begin(*pending);
  Watchdog::Get().Arm(pending, std::move(on_expire));
  return pending;
}

std::unique_ptr<CommHandle> TrackedCommunicator::Handle(const char* op, const CollectiveTag& tag,
                                                        std::shared_ptr<PendingCollective> pending,
                                                        std::function<void()> after,
                                                        std::function<void()> cleanup,
                                                        std::function<void()> order) {
  std::string refused;
  if (pending) {
    std::lock_guard<std::mutex> lock(counters_mu_);
    in_flight_.insert(pending->seq());
  } else {
    refused = absl::StrCat(tag.Describe(), ": ", op, " on group '", name(),
                           "' refused: an earlier collective of this group failed, so the group is unusable");
  }
  return std::make_unique<TrackedHandle>(c10::intrusive_ptr<TrackedCommunicator>::unsafe_reclaim_from_nonowning(this),
                                         std::move(pending), std::move(after), std::move(cleanup),
                                         std::move(order), std::move(refused));
}

void TrackedCommunicator::Retire(uint64_t seq) {
  std::lock_guard<std::mutex> lock(counters_mu_);
  in_flight_.erase(seq);
}

absl::Status TrackedCommunicator::Complete(PendingCollective& pending, const std::function<void()>& after) {
  {
    std::lock_guard<std::mutex> lock(counters_mu_);
    ++counters_.waits;
    // Idle: nothing started after this collective is still in flight.
    if (in_flight_.empty() || *in_flight_.rbegin() == pending.seq()) ++counters_.idle_waits;
  }
  const auto t0 = Clock::now();
  const auto state = pending.Await();
  {
    std::lock_guard<std::mutex> lock(counters_mu_);
    counters_.wait_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    in_flight_.erase(pending.seq());
  }
  if (state == PendingCollective::State::kDone) {
    monitor_.End(pending.seq());
    if (after) after();
    return absl::OkStatus();
  }
  failed_ = true;
  return monitor_.Diagnose(pending, state);
}

void TrackedCommunicator::CountAllToAll(const at::Tensor& input, const std::vector<int64_t>& send_rows,
                                        const std::vector<int64_t>& recv_rows) {
  const int64_t row_bytes = (input.dim() > 1 ? input.stride(0) : 1) * input.element_size();
  const int me = rank();
  std::lock_guard<std::mutex> lock(counters_mu_);
  counters_.bytes_sent += (std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0}) - send_rows[me]) * row_bytes;
  counters_.bytes_received +=
      (std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0}) - recv_rows[me]) * row_bytes;
}

}  // namespace dynamoe::runtime
