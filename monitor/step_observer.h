// Who hears about a finished step. The step notifies; what to do with it
// (metrics, the routing trace, a user's own logging) is an observer's
// business, wired up by the runtime from the settings (config/step_observers.h).
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "monitor/step_stats.h"

namespace dynamoe::monitor {

class StepObserver {
 public:
  virtual ~StepObserver() = default;
  // Every forward that is not a recomputation, training or not (see
  // StepStats::training). May throw dynamoe::Error; the step's caller sees it.
  virtual void OnStep(const StepStats& stats) = 0;
};

// An ordered, thread-safe list of observers.
class StepObservers {
 public:
  void Add(std::shared_ptr<StepObserver> observer);
  bool empty() const;
  // Calls each observer in the order added.
  void Notify(const StepStats& stats) const;

 private:
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<StepObserver>> observers_;
};

}  // namespace dynamoe::monitor
