#include "monitor/step_observer.h"

namespace dynamoe::monitor {

void StepObservers::Add(std::shared_ptr<StepObserver> observer) {
  if (!observer) return;
  std::lock_guard<std::mutex> lock(mu_);
  observers_.push_back(std::move(observer));
}

bool StepObservers::empty() const {
  std::lock_guard<std::mutex> lock(mu_);
  return observers_.empty();
}

void StepObservers::Notify(const StepStats& stats) const {
  std::vector<std::shared_ptr<StepObserver>> now;
  {
    std::lock_guard<std::mutex> lock(mu_);  // not held while observers run: one may add another
    now = observers_;
  }
  for (const auto& o : now) o->OnStep(stats);
}

}  // namespace dynamoe::monitor
