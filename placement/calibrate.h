// dynamoe-replay calibrate: fits the cost model's compute rate and link
// rate to the phase timings a trace recorded (DYNAMOE_TRACE), on the first
// steps, and reports how well the fitted model predicts the held-out rest.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "placement/trace.h"

namespace dynamoe::placement {

// y = slope * x + intercept, fitted to minimise the relative absolute error
// on the fit steps.
struct PhaseFit {
  std::string phase;   // "experts" (x: rows this rank computes) or "exchange" (dispatch + combine; x: rows this
                       // rank sends or receives, the larger)
  double slope = 0, intercept = 0;
  double heldout_median_error = 0;  // |predicted - recorded| / recorded over held-out steps
};

struct Calibration {
  int64_t warmup_steps = 0;  // leading steps left out (one-time costs): min(10, steps / 10)
  int64_t fit_steps = 0, heldout_steps = 0;
  std::vector<PhaseFit> fits;
  double flops = 0;           // forward FLOP/s implied by the experts fit (0 without layer sizes)
  double bytes_per_second = 0;  // per exchange, implied by the exchange fit (0 without layer sizes)
  // Per held-out step: |predicted - recorded| / recorded of the whole forward
  // (every recorded phase; phases without a fit count at their fit-steps mean).
  std::vector<double> step_errors;
  double step_median_error = 0;
  // The same without the count all-gather, whose time is mostly waiting for
  // peers still in the previous step's backward (not a function of this
  // step's routing).
  std::vector<double> work_errors;
  double work_median_error = 0;
};

// InvalidArgument when the trace has no phase timings (imported traces) or
// fewer than 5 steps with them; heldout in (0, 1).
absl::StatusOr<Calibration> Calibrate(const Trace& trace, double heldout = 0.2);

}  // namespace dynamoe::placement
