// PeerMonitor: heartbeats and failure diagnosis for one communicator group.
// Every rank publishes, through the group's store, a heartbeat counter and
// the collective it is in. When a collective fails or expires, the waiting
// rank reads its peers' records and names the culprit: a peer whose heartbeat
// stopped (died or frozen), one that entered a different collective
// (diverged), or one that never arrived (hung elsewhere). Clocks are never
// compared across hosts: staleness is a counter that stops moving.
#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/watchdog.h"

namespace dynamoe::runtime {

struct GroupInfo {
  std::string name = "world";     // "world", "ep0", "edp1", ...
  std::string backend = "gloo";
  int rank = 0;
  int size = 1;
  std::vector<int> global_ranks;  // world rank of each member
  int store_host = 0;             // world rank hosting the store
  std::chrono::milliseconds timeout{300000};  // DYNAMOE_TIMEOUT_S
};

class PeerMonitor {
 public:
  PeerMonitor(c10::intrusive_ptr<c10d::Store> store, GroupInfo info);
  ~PeerMonitor();

  // A collective starts / ends on this rank (published with the next beat).
  void Begin(const PendingCollective& p);
  void End(uint64_t seq);

  // When a collective is declared expired: the deadline minus the time the
  // diagnosis needs, so that the error is raised by the deadline.
  Clock::duration expire_after() const { return expire_after_; }

  // The error for a collective that failed or expired, naming layer, phase,
  // operation and peer. Also publishes this rank's failure to its peers.
  absl::Status Diagnose(const PendingCollective& p, PendingCollective::State state);

  const GroupInfo& info() const { return info_; }

 private:
  struct PeerRecord {
    bool present = false;
    int64_t beat = -1;
    uint64_t seq = 0;
    std::string state, op, where;  // where: "layer 'x' phase 'y'"
    std::string failure;           // its own diagnosis, if it failed
  };
  // What the heartbeat thread and the diagnosis's store readers share with
  // the monitor. They hold it by shared_ptr, so none of them outlives what it
  // uses, and the monitor never waits for a thread blocked on a frozen store.
  struct Shared;
  std::string Describe(const PendingCollective& p) const;
  static void Beat(Shared& s);
  std::vector<PeerRecord> ReadPeers(bool* store_ok);  // bounded in time
  static std::vector<PeerRecord> ReadPeersNow(Shared& s, bool* store_ok);

  c10::intrusive_ptr<c10d::Store> store_;
  GroupInfo info_;
  std::chrono::milliseconds interval_;
  Clock::duration expire_after_;
  std::shared_ptr<Shared> shared_;
};

}  // namespace dynamoe::runtime
