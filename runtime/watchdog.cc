#include "runtime/watchdog.h"

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <thread>
#include <vector>

namespace dynamoe::runtime {

bool PendingCollective::Finish(State state, std::string error) {
  std::function<void()> cancel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ != State::kRunning) return false;
    state_ = state;
    error_ = std::move(error);
    cancel = std::move(cancel_timer_);
  }
  cv_.notify_all();
  if (cancel) cancel();
  return true;
}

PendingCollective::State PendingCollective::Await() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return state_ != State::kRunning; });
  return state_;
}

std::string PendingCollective::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void PendingCollective::SetCancel(std::function<void()> cancel) {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ == State::kRunning) cancel_timer_ = std::move(cancel);
}

struct Watchdog::Impl {
  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard{io.get_executor()};
  std::vector<std::thread> threads;
};

Watchdog::Watchdog() : impl_(std::make_unique<Impl>()) {
  // Two threads: a heartbeat blocked on a slow store must not delay deadlines.
  for (int i = 0; i < 2; ++i) impl_->threads.emplace_back([io = &impl_->io] { io->run(); });
  for (auto& t : impl_->threads) t.detach();
}

Watchdog::~Watchdog() = default;

Watchdog& Watchdog::Get() {
  // Never destroyed: collectives may still be armed while the process exits.
  static Watchdog* watchdog = new Watchdog();
  return *watchdog;
}

void Watchdog::Arm(const std::shared_ptr<PendingCollective>& p, std::function<void()> on_expire) {
  // The timer lives on a strand: its expiry handler and the cancel that a
  // completing collective posts never run at once on the two io threads.
  auto strand = boost::asio::make_strand(impl_->io);
  auto timer = std::make_shared<boost::asio::steady_timer>(strand, p->expire_at());
  std::weak_ptr<PendingCollective> weak = p;
  timer->async_wait([timer, weak, on_expire = std::move(on_expire)](const boost::system::error_code& ec) {
    if (ec) return;  // cancelled: the collective completed
    auto pending = weak.lock();
    if (pending && pending->Finish(PendingCollective::State::kExpired) && on_expire) on_expire();
  });
  p->SetCancel([strand, weak_timer = std::weak_ptr<boost::asio::steady_timer>(timer)] {
    boost::asio::post(strand, [weak_timer] {
      if (auto t = weak_timer.lock()) t->cancel();
    });
  });
}

}  // namespace dynamoe::runtime
