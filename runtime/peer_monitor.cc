#include "runtime/peer_monitor.h"

#include <algorithm>
#include <condition_variable>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "runtime/call_within.h"

namespace dynamoe::runtime {
namespace {

std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }
std::string String(const std::vector<uint8_t>& b) { return std::string(b.begin(), b.end()); }
std::string HeartbeatKey(int rank) { return absl::StrCat("hb/", rank); }
std::string FailureKey(int rank) { return absl::StrCat("failed/", rank); }

std::string Where(const CollectiveTag& tag) {
  return absl::StrCat("layer '", tag.layer, "' phase '", tag.phase, "'", tag.backward ? " (backward)" : "");
}

}  // namespace

std::string CollectiveTag::Describe() const { return Where(*this); }

struct PeerMonitor::Shared {
  c10::intrusive_ptr<c10d::Store> store;
  GroupInfo info;
  std::mutex mu;
  std::condition_variable cv;
  bool stopped = false;
  int64_t beats = 0;
  uint64_t seq = 0;
  std::string state = "idle", op = "-", where = "-";
};

PeerMonitor::PeerMonitor(c10::intrusive_ptr<c10d::Store> store, GroupInfo info)
    : store_(std::move(store)), info_(std::move(info)) {
  if (info_.global_ranks.empty())
    for (int r = 0; r < info_.size; ++r) info_.global_ranks.push_back(r);
  // Ten beats per deadline, between 20 ms and 1 s; three beats to diagnose.
  interval_ = std::clamp(info_.timeout / 10, std::chrono::milliseconds(20), std::chrono::milliseconds(1000));
  const auto window = std::min<Clock::duration>(3 * interval_, info_.timeout / 2);
  expire_after_ = info_.timeout - window;
  shared_ = std::make_shared<Shared>();
  shared_->store = store_;
  shared_->info = info_;
  Beat(*shared_);
  // Heartbeats run on their own thread, never on the control thread: a
  // frozen store host blocks a store write, and must not delay deadlines.
  std::thread([s = shared_, interval = interval_] {
    std::unique_lock<std::mutex> lock(s->mu);
    while (!s->cv.wait_for(lock, interval, [&] { return s->stopped; })) {
      lock.unlock();
      Beat(*s);
      lock.lock();
    }
  }).detach();
}

PeerMonitor::~PeerMonitor() {
  std::lock_guard<std::mutex> lock(shared_->mu);
  shared_->stopped = true;
  shared_->cv.notify_all();
}

void PeerMonitor::Begin(const PendingCollective& p) {
  std::lock_guard<std::mutex> lock(shared_->mu);
  shared_->seq = p.seq();
  shared_->state = "running";
  shared_->op = p.op();
  shared_->where = Where(p.tag());
}

void PeerMonitor::End(uint64_t seq) {
  std::lock_guard<std::mutex> lock(shared_->mu);
  if (seq == shared_->seq) shared_->state = "done";
}

void PeerMonitor::Beat(Shared& s) {
  std::string value;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    value = absl::StrCat(++s.beats, "\t", s.seq, "\t", s.state, "\t", s.op, "\t", s.where);
  }
  try {
    s.store->set(HeartbeatKey(s.info.rank), Bytes(value));
  } catch (const std::exception& e) {
    // The store is gone (its host died); the diagnosis reports it.
    DYNAMOE_LOG(kDebug) << "heartbeat of group " << s.info.name << " failed: " << e.what();
  }
}

std::vector<PeerMonitor::PeerRecord> PeerMonitor::ReadPeersNow(Shared& s, bool* store_ok) {
  const GroupInfo& info = s.info;
  std::vector<PeerRecord> peers(info.size);
  *store_ok = true;
  try {
    for (int r = 0; r < info.size; ++r) {
      if (r == info.rank) continue;
      PeerRecord& p = peers[r];
      if (s.store->check({FailureKey(r)})) p.failure = String(s.store->get(FailureKey(r)));
      if (!s.store->check({HeartbeatKey(r)})) continue;
      const std::vector<std::string> f = absl::StrSplit(String(s.store->get(HeartbeatKey(r))), '\t');
      if (f.size() < 5) continue;
      p.present = absl::SimpleAtoi(f[0], &p.beat) && absl::SimpleAtoi(f[1], &p.seq);
      p.state = f[2];
      p.op = f[3];
      p.where = f[4];
    }
  } catch (const std::exception&) {
    *store_ok = false;
  }
  return peers;
}

std::vector<PeerMonitor::PeerRecord> PeerMonitor::ReadPeers(bool* store_ok) {
  // A store whose host died can block a client for long; give up after one
  // heartbeat interval and call it unreachable.
  using Read = std::pair<bool, std::vector<PeerRecord>>;
  const std::optional<Read> read =
      CallWithin<Read>(std::max(interval_, std::chrono::milliseconds(200)), [s = shared_] {
        bool ok = false;
        auto peers = ReadPeersNow(*s, &ok);
        return Read(ok, std::move(peers));
      });
  *store_ok = read.has_value() && read->first;
  return *store_ok ? read->second : std::vector<PeerRecord>(info_.size);
}

std::string PeerMonitor::Describe(const PendingCollective& p) const {
  return absl::StrCat(Where(p.tag()), ": ", p.op(), " #", p.seq(), " on group '", info_.name, "' (",
                      info_.size, " ranks, ", info_.backend, ")");
}

absl::Status PeerMonitor::Diagnose(const PendingCollective& p, PendingCollective::State state) {
  const double waited = std::chrono::duration<double>(Clock::now() - p.start()).count();
  const double timeout_s = std::chrono::duration<double>(info_.timeout).count();
  std::string what = state == PendingCollective::State::kExpired
                         ? absl::StrFormat("did not complete within %g s (DYNAMOE_TIMEOUT_S)", timeout_s)
                         : absl::StrFormat("failed after %.3g s: %s", waited, p.error());
  // Two looks at the peers, a few heartbeats apart.
  const auto window = info_.timeout - std::chrono::duration_cast<std::chrono::milliseconds>(expire_after_);
  bool ok1 = true, ok2 = true;
  const auto first = ReadPeers(&ok1);
  std::this_thread::sleep_for(window * 6 / 10);
  const auto second = ReadPeers(&ok2);
  // The rank hosting the store keeps it up a little longer, so that peers
  // diagnosing the same failure can finish their second look.
  if (info_.global_ranks[info_.rank] == info_.store_host) std::this_thread::sleep_for(window * 35 / 100);

  std::vector<std::string> dead, diverged, absent, failed, waiting;
  // The store died between the looks: the first still tells who had failed.
  if (ok1 && !ok2)
    for (int r = 0; r < info_.size; ++r)
      if (r != info_.rank && !first[r].failure.empty())
        failed.push_back(absl::StrCat("rank ", r, " had failed: ", first[r].failure));
  for (int r = 0; r < info_.size && ok1 && ok2; ++r) {
    if (r == info_.rank) continue;
    const PeerRecord &a = first[r], &b = second[r];
    const std::string who = info_.global_ranks[r] == r
                                ? absl::StrCat("rank ", r)
                                : absl::StrCat("rank ", r, " (world rank ", info_.global_ranks[r], ")");
    const std::string last = b.present ? absl::StrCat("#", b.seq, " ", b.op, " (", b.where, ", ", b.state, ")")
                                       : "no collective (it never published a heartbeat)";
    if (!b.failure.empty()) {
      failed.push_back(absl::StrCat(who, " already failed: ", b.failure));
    } else if (!b.present || !a.present || a.beat == b.beat) {
      dead.push_back(absl::StrCat(who, " stopped responding (its heartbeat stopped: the process died or is "
                                       "frozen); it was last in ",
                                  last));
    } else if (b.seq == p.seq() && (b.op != p.op() || b.where != Where(p.tag()))) {
      diverged.push_back(absl::StrCat(who, " diverged: its collective #", p.seq(), " is ", b.op, " (", b.where,
                                      ")"));
    } else if (b.seq < p.seq()) {
      absent.push_back(absl::StrCat(who, " is alive but has not reached this collective; it is at ", last));
    } else if (b.seq == p.seq()) {
      waiting.push_back(who);
    } else {
      diverged.push_back(absl::StrCat(who, " is ahead, at ", last, ": ranks issued different collectives"));
    }
  }
  std::vector<std::string> causes;
  if (!ok1 || !ok2)
    causes.push_back(absl::StrCat("the group's store, hosted by world rank ", info_.store_host,
                                  ", is unreachable: world rank ", info_.store_host, " died or is frozen"));
  for (auto* list : {&dead, &diverged, &absent, &failed})
    causes.insert(causes.end(), list->begin(), list->end());
  std::string message = absl::StrCat(Describe(p), " ", what, ". ");
  if (causes.empty())
    absl::StrAppend(&message, "No peer was found missing: every peer is in the same collective.");
  else
    absl::StrAppend(&message, "Cause: ", absl::StrJoin(causes, "; "), ".");
  if (!waiting.empty() && !causes.empty())
    absl::StrAppend(&message, " Waiting with this rank: ", absl::StrJoin(waiting, ", "), ".");
  // Publish this rank's failure for its peers' diagnoses, without waiting on
  // a store that may be gone.
  std::thread([store = store_, key = FailureKey(info_.rank), value = causes.empty() ? what : causes.front()] {
    try {
      store->set(key, Bytes(value));
    } catch (const std::exception&) {
    }
  }).detach();
  return state == PendingCollective::State::kExpired ? absl::DeadlineExceededError(message)
                                                     : absl::UnavailableError(message);
}

}  // namespace dynamoe::runtime
