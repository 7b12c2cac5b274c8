#include "runtime/fault_injection.h"

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/log.h"

namespace dynamoe::runtime {
namespace {

struct Fault {
  bool armed = false;
  int signal = 0;
  std::string phase;
  bool backward = false;
  int rank = -1;
  int nth = 1;
  std::atomic<int> seen{0};
};

Fault* Parse() {
  auto* f = new Fault();  // never destroyed: read by collectives until exit
  const char* v = std::getenv("DYNAMOE_FAULT");
  if (v == nullptr || *v == '\0') return f;
  const std::vector<std::string> p = absl::StrSplit(v, ',');
  const bool ok = p.size() == 5 && (p[0] == "kill" || p[0] == "stop") && (p[2] == "forward" || p[2] == "backward") &&
                  absl::SimpleAtoi(p[3], &f->rank) && absl::SimpleAtoi(p[4], &f->nth) && f->nth >= 1;
  if (!ok) {
    DYNAMOE_LOG(kError) << "DYNAMOE_FAULT=" << v << " ignored: expected <kill|stop>,<phase>,<forward|backward>,"
                        << "<world rank>,<n >= 1>";
    return f;
  }
  f->signal = p[0] == "kill" ? SIGKILL : SIGSTOP;
  f->phase = p[1];
  f->backward = p[2] == "backward";
  f->armed = true;
  return f;
}

}  // namespace

void MaybeInjectFault(const CollectiveTag& tag, int world_rank) {
  static Fault* fault = Parse();
  if (!fault->armed || world_rank != fault->rank || tag.phase != fault->phase || tag.backward != fault->backward)
    return;
  if (fault->seen.fetch_add(1) + 1 != fault->nth) return;
  DYNAMOE_LOG(kWarning) << "DYNAMOE_FAULT: " << (fault->signal == SIGKILL ? "killing" : "freezing") << " world rank "
                        << world_rank << " at " << tag.Describe();
  std::raise(fault->signal);
}

}  // namespace dynamoe::runtime
