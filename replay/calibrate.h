// dynamoe-replay calibrate: fits the cost model's rates to the phase timings
// a trace recorded (DYNAMOE_TRACE) with the fit DYNAMOE_CALIBRATE=online runs
// (placement/online_fit.h), on the first steps, and reports how well the
// fitted model predicts the held-out rest.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "placement/online_fit.h"
#include "placement/spec.h"
#include "placement/trace.h"

namespace dynamoe::placement {

struct PhaseFit {
  std::string phase;  // "experts" or "exchange" (dispatch + combine + shadow_broadcast)
  double heldout_median_error = 0;  // |predicted - recorded| / recorded over held-out steps
};

struct Calibration {
  std::string layer;         // the layer fitted (and those of the same shape)
  int64_t warmup_steps = 0;  // leading steps left out (one-time costs): min(10, steps / 10)
  int64_t fit_steps = 0, heldout_steps = 0;
  FittedRates rates;  // after the fit steps
  ClusterSpec cluster;  // the prior with the fitted rates
  std::vector<PhaseFit> fits;
  double flops = 0;             // forward FLOP/s implied by seconds per row (0 without layer sizes)
  double bytes_per_second = 0;  // intra-node bytes/s of the fit
  // Per held-out step: |predicted - recorded| / recorded of the whole forward (every recorded phase).
  std::vector<double> step_errors;
  double step_median_error = 0;
  // The same without the count all-gather (predicted at its fit-steps median).
  std::vector<double> work_errors;
  double work_median_error = 0;
  // The error DYNAMOE_CALIBRATE=online would report at the end of the trace:
  // the running fit (its default window) over every step after the warm-up,
  // each step predicted before it joined the fit; -1 with too few steps.
  double online_median_error = -1;
};

// InvalidArgument when the trace has no phase timings (imported traces) or
// fewer than 5 steps with them; heldout in (0, 1). prior: the cluster the
// rates start from (world size taken from the trace; one node unless set).
absl::StatusOr<Calibration> Calibrate(const Trace& trace, double heldout = 0.2, ClusterSpec prior = {});

}  // namespace dynamoe::placement
