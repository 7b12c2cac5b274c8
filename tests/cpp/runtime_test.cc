// The control thread and heartbeats under a store that blocks (a frozen
// store host) and under teardown while threads still run. Built in the
// default preset and, with the `tsan` preset, under ThreadSanitizer.
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "runtime/peer_monitor.h"
#include "runtime/rendezvous.h"
#include "runtime/watchdog.h"
#include "tools/local_launch.h"

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
  std::atomic<int> blocked{0};  // calls waiting for a thaw now

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
    if (!frozen_) return;
    ++blocked;
    cv_.wait(lock, [&] { return !frozen_; });
    --blocked;
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool frozen_ = false;
};

// Polls `done` every millisecond for up to `limit` (generous: the machine is
// shared; a hang, not slowness, is what the callers detect).
template <typename F>
bool WaitFor(F done, std::chrono::seconds limit = std::chrono::seconds(60)) {
  const auto until = Clock::now() + limit;
  while (!done() && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return done();
}

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
// not hold the control thread: a deadline armed meanwhile expires while every
// heartbeat is still blocked (a control thread they held would not fire it
// before the thaw), and the diagnosis names the collective and the store.
TEST(Runtime, DeadlinesFireWhileEveryHeartbeatBlocksOnAFrozenStore) {
  auto store = c10::make_intrusive<FreezableStore>();
  std::vector<std::unique_ptr<PeerMonitor>> monitors;
  for (const char* name : {"ep0", "edp0", "world"})
    monitors.push_back(std::make_unique<PeerMonitor>(store, Group(name, 0, 2, 200ms)));  // beats every 20 ms
  store->Freeze();
  ASSERT_TRUE(WaitFor([&] { return store->blocked >= 3; })) << "the heartbeats never reached the frozen store";
  auto pending = std::make_shared<PendingCollective>(1, "all_to_all", CollectiveTag{}, 100ms);
  Watchdog::Get().Arm(pending);
  auto state = std::async(std::launch::async, [pending] { return pending->Await(); });
  const bool fired = state.wait_for(60s) == std::future_status::ready;
  const int still_blocked = store->blocked;
  const auto fired_at = Clock::now();
  if (!fired) store->Thaw();  // lets a held control thread finish before the test ends
  ASSERT_TRUE(fired) << "the deadline did not fire while the store was frozen";
  EXPECT_EQ(state.get(), PendingCollective::State::kExpired);
  EXPECT_GE(still_blocked, 3) << "the deadline fired only after a heartbeat was released";
  EXPECT_GE(fired_at, pending->expire_at()) << "the deadline fired early";
  const absl::Status status = monitors[0]->Diagnose(*pending, PendingCollective::State::kExpired);
  store->Thaw();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_NE(status.message().find("all_to_all #1 on group 'ep0' (2 ranks, gloo) did not complete within 0.2 s"),
            std::string::npos)
      << status;
  EXPECT_NE(status.message().find("the group's store, hosted by world rank 0, is unreachable"), std::string::npos)
      << status;
}

// Destroying a monitor while its heartbeat is inside a store write, and while
// a diagnosis read is still running, must neither wait for them nor leave
// them touching the destroyed monitor (ThreadSanitizer checks the latter).
TEST(Runtime, MonitorsDestroyedWhileTheirHeartbeatsRun) {
  auto store = c10::make_intrusive<FreezableStore>();
  store->delay_ms = 15;
  for (int i = 0; i < 20; ++i) {  // slow writes: a beat is often mid-write at the reset
    auto monitor = std::make_unique<PeerMonitor>(store, Group("g" + std::to_string(i), 0, 2, 200ms));
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + i % 7));
    monitor.reset();
  }
  // A heartbeat blocked in set() until the thaw: a destructor that waited for
  // it would not return while the store stays frozen.
  store->delay_ms = 0;
  auto blocked_monitor = std::make_unique<PeerMonitor>(store, Group("frozen", 0, 2, 200ms));
  store->Freeze();
  ASSERT_TRUE(WaitFor([&] { return store->blocked >= 1; })) << "the heartbeat never reached the frozen store";
  auto destroyed = std::async(std::launch::async, [&] { blocked_monitor.reset(); });
  const bool returned = destroyed.wait_for(60s) == std::future_status::ready;
  const int still_blocked = store->blocked;
  store->Thaw();
  EXPECT_TRUE(returned) << "the destructor waited for a blocked heartbeat";
  EXPECT_GE(still_blocked, 1);
  destroyed.wait();
  // A diagnosis whose store reads outlive its bounded wait, then the monitor dies.
  auto monitor = std::make_unique<PeerMonitor>(store, Group("diag", 0, 2, 200ms));
  store->Freeze();
  auto pending = std::make_shared<PendingCollective>(7, "all_gather", CollectiveTag{}, 0ms);
  pending->Finish(PendingCollective::State::kFailed, "peer reset");
  const absl::Status status = monitor->Diagnose(*pending, PendingCollective::State::kFailed);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_NE(status.message().find("all_gather #7 on group 'diag' (2 ranks, gloo) failed after"), std::string::npos)
      << status;
  EXPECT_NE(status.message().find("peer reset"), std::string::npos) << status;
  EXPECT_NE(status.message().find("the group's store, hosted by world rank 0, is unreachable"), std::string::npos)
      << status;
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
  WaitFor([&] { return *expired + done >= 400; });
  std::this_thread::sleep_for(20ms);  // a double count would land here
  EXPECT_EQ(*expired + done, 400);
}

// Binds a fresh socket to 127.0.0.1:port (0: any); returns the bound port,
// or -errno.
int BindLoopback(int port, bool reuse_addr) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  const int on = 1;
  if (reuse_addr) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  socklen_t len = sizeof(addr);
  int result = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 ? 0 : -errno;
  if (result == 0 && getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) result = ntohs(addr.sin_port);
  close(fd);
  return result;
}

// The launcher's MASTER_PORT (tools/local_launch.h): while reserved, nobody
// else gets it (the old choose-close-reuse let another process bind it in
// between), yet rank 0's store can host on it.
TEST(LocalLaunch, ReservedPortIsKeptFromOthersAndHostsTheStore) {
  const dynamoe::tools::ReservedPort reserved;
  const int port = reserved.port();
  ASSERT_GT(port, 0);
  EXPECT_EQ(BindLoopback(port, false), -EADDRINUSE);
  for (int i = 0; i < 500; ++i) {  // the kernel's own choices skip it
    ASSERT_NE(BindLoopback(0, false), port);
    ASSERT_NE(BindLoopback(0, true), port);
  }
  EXPECT_NE(dynamoe::tools::ReservedPort().port(), port);
  auto server = ConnectStore("127.0.0.1", port, /*is_server=*/true, 2, std::chrono::milliseconds(30000));
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = ConnectStore("127.0.0.1", port, /*is_server=*/false, 2, std::chrono::milliseconds(30000));
  ASSERT_TRUE(client.ok()) << client.status();
  (*client)->set("k", std::vector<uint8_t>{42});
  EXPECT_EQ((*server)->get("k"), std::vector<uint8_t>{42});
}

}  // namespace
}  // namespace dynamoe::runtime
