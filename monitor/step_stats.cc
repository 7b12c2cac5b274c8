#include "monitor/step_stats.h"

namespace dynamoe::monitor {

std::map<std::string, double> StepStats::phase_seconds() const {
  std::map<std::string, double> out;
  for (int p = 0; p < kNumPhases; ++p)
    if (IsForwardPhase(static_cast<Phase>(p))) out[kPhaseNames[p]] = times.seconds[p];
  return out;
}

double StepStats::step_seconds() const {
  double total = 0;
  for (double s : times.seconds) total += s;
  return total;
}

}  // namespace dynamoe::monitor
