// The control thread and heartbeats under a store that blocks (a frozen
// store host) and under teardown while threads still run. Built in the
// default preset and, with the `tsan` preset, under ThreadSanitizer.
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "runtime/peer_monitor.h"
#include "runtime/watchdog.h"

namespace dynamoe::runtime {
namespace {

using namespace std::chrono_literals;

// An in-memory store that can freeze: every call blocks until thawed, as a
// TCPStore client does when its host is stopped (SIGSTOP). `delay` slows
// every write (delay_ms), so a heartbeat is often in flight.
class FreezableStore : public c10d::HashStore {
 public:
  void Freeze() { SetFrozen(true); }
  void Thaw() { SetFrozen(false); }
  std::atomic<int> delay_ms{0};

  void set(const std::string& key, const std::vector<uint8_t>& value) override {
    Block();
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms.load()));
    c10d::HashStore::set(key, value);
  }
  std::vector<uint8_t> get(const std::string& key) override {
    Block();
    return c10d::HashStore::get(key);
  }
  bool check(const std::vector<std::string>& keys) override {
    Block();
    return c10d::HashStore::check(keys);
  }

 private:
  void SetFrozen(bool frozen) {
    std::lock_guard<std::mutex> lock(mu_);
    frozen_ = frozen;
    cv_.notify_all();
  }
  void Block() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !frozen_; });
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool frozen_ = false;
};

GroupInfo Group(const std::string& name, int rank, int size, std::chrono::milliseconds timeout) {
  GroupInfo info;
  info.name = name;
  info.rank = rank;
  info.size = size;
  info.timeout = timeout;
  return info;
}

// Three groups heartbeat into a frozen store (ep_size < world: the EP group,
// the expert-data-parallel group and the world). Their blocked writes must
// not hold the control thread: a deadline armed meanwhile fires on time.
TEST(Runtime, DeadlinesFireWhileEveryHeartbeatBlocksOnAFrozenStore) {
  auto store = c10::make_intrusive<FreezableStore>();
  std::vector<std::unique_ptr<PeerMonitor>> monitors;
  for (const char* name : {"ep0", "edp0", "world"})
    monitors.push_back(std::make_unique<PeerMonitor>(store, Group(name, 0, 2, 200ms)));  // beats every 20 ms
  store->Freeze();
  std::this_thread::sleep_for(150ms);  // every heartbeat is now blocked in set()
  auto pending = std::make_shared<PendingCollective>(1, "all_to_all", CollectiveTag{}, 100ms);
  const auto start = Clock::now();
  Watchdog::Get().Arm(pending);
  auto state = std::async(std::launch::async, [pending] { return pending->Await(); });
  const bool fired = state.wait_for(3s) == std::future_status::ready;
  const double late_s = std::chrono::duration<double>(Clock::now() - start - 100ms).count();
  store->Thaw();  // lets the blocked heartbeats (and, on failure, the deadline) finish
  ASSERT_TRUE(fired) << "the deadline did not fire within 3 s while the store was frozen";
  EXPECT_EQ(state.get(), PendingCollective::State::kExpired);
  EXPECT_LT(late_s, 0.5) << "the deadline fired " << late_s << " s late";
}

// Destroying a monitor while its heartbeat is inside a (slow) store write,
// and while a diagnosis read is still running, must neither wait for them
// nor leave them touching the destroyed monitor.
TEST(Runtime, MonitorsDestroyedWhileTheirHeartbeatsRun) {
  auto store = c10::make_intrusive<FreezableStore>();
  store->delay_ms = 15;
  for (int i = 0; i < 20; ++i) {
    auto monitor = std::make_unique<PeerMonitor>(store, Group("g" + std::to_string(i), 0, 2, 200ms));
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + i % 7));  // a beat is mid-write
    const auto start = Clock::now();
    monitor.reset();
    EXPECT_LT(Clock::now() - start, 10ms) << "the destructor waited for a heartbeat";
  }
  // A diagnosis whose store reads outlive its bounded wait, then the monitor dies.
  store->delay_ms = 0;
  auto monitor = std::make_unique<PeerMonitor>(store, Group("diag", 0, 2, 200ms));
  store->Freeze();
  auto pending = std::make_shared<PendingCollective>(7, "all_gather", CollectiveTag{}, 0ms);
  pending->Finish(PendingCollective::State::kFailed, "peer reset");
  const absl::Status status = monitor->Diagnose(*pending, PendingCollective::State::kFailed);
  EXPECT_NE(std::string(status.message()).find("unreachable"), std::string::npos) << status;
  monitor.reset();
  store->Thaw();  // the detached readers now run against the shared state, not the monitor
  std::this_thread::sleep_for(100ms);
}

// Collectives that complete right at their deadline: the completion's timer
// cancel and the expiry handler race on the control thread's two workers.
TEST(Runtime, CompletionsRacingTheirDeadlines) {
  // Counters on the heap: an expiry callback may still run after the loop below.
  auto expired = std::make_shared<std::atomic<int>>(0);
  std::atomic<int> done{0};
  std::vector<std::thread> finishers;
  std::vector<std::shared_ptr<PendingCollective>> all;
  for (int i = 0; i < 400; ++i) {
    auto p = std::make_shared<PendingCollective>(i, "all_gather", CollectiveTag{}, std::chrono::microseconds(500 * (i % 5)));
    Watchdog::Get().Arm(p, [expired] { ++*expired; });
    all.push_back(p);
  }
  for (int t = 0; t < 4; ++t)
    finishers.emplace_back([&, t] {
      for (size_t i = t; i < all.size(); i += 4)
        if (all[i]->Finish(PendingCollective::State::kDone)) ++done;
    });
  for (auto& f : finishers) f.join();
  for (auto& p : all) p->Await();
  // Each collective ends exactly once: the callbacks of the expired ones run
  // right after their Finish, so wait (boundedly) for them to land.
  const auto until = Clock::now() + 5s;
  while (*expired + done < 400 && Clock::now() < until) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(*expired + done, 400);
}

}  // namespace
}  // namespace dynamoe::runtime
