// The four policies behind MakePolicy (policy.h); one .cc file each.
#pragma once

#include <vector>

#include "placement/policy.h"

namespace dynamoe::placement {

class NonePolicy : public Policy {
 public:
  NonePolicy(ClusterSpec c, LayerSpec l, PolicyOptions o) : Policy("none", c, l, std::move(o)) {}

 protected:
  Plan Decide(const CountMatrix& counts) override;
};

class FasterMoEPolicy : public Policy {
 public:
  FasterMoEPolicy(ClusterSpec c, LayerSpec l, PolicyOptions o) : Policy("fastermoe", c, l, std::move(o)) {}

 protected:
  Plan Decide(const CountMatrix& counts) override;
};

class AdaptivePolicy : public Policy {
 public:
  AdaptivePolicy(ClusterSpec c, LayerSpec l, PolicyOptions o) : Policy("adaptive", c, l, std::move(o)) {}

 protected:
  Plan Decide(const CountMatrix& counts) override;

 private:
  // Greedy actions on `state` (which starts at plain expert parallelism).
  void Search(LoadState& state);
  bool has_previous_ = false;
  Plan previous_;
};

class EplbPolicy : public Policy {
 public:
  EplbPolicy(ClusterSpec c, LayerSpec l, PolicyOptions o) : Policy("eplb", c, l, std::move(o)) {}

 protected:
  void Observe(const CountMatrix& counts) override;
  Plan Decide(const CountMatrix& counts) override;

 private:
  std::vector<double> average_;  // moving average of the count matrix
};

// Experts ordered by load, heaviest first; ties by lower index.
std::vector<int64_t> ExpertsByLoad(const std::vector<int64_t>& loads);

}  // namespace dynamoe::placement
