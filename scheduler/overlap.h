// The overlapped schedule (DYNAMOE_SCHEDULE=overlap): the token all-to-all
// runs stage by stage (pipeline_layout.h) while the experts compute what has
// arrived, forward and backward.
//
// Per stage t: wait for stage t's rows, start stage t + 2's, compute stage t,
// start sending its outputs back; all returns are waited after the loop. So
// while stage t computes, stages t + 1 and t + 2 travel in and t - 1 travels
// back. The local unit (rows this rank keeps) is computed first, while the
// first stages travel. On GPU backends (CommHandle::OrderAfter) the loop only
// orders streams and never blocks the host; on the host, waiting for stage
// t's rows is the data dependency itself. Backward sends the output
// gradients along the same route and runs the expert backward per stage.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

#include "monitor/phases.h"
#include "runtime/communicator.h"
#include "scheduler/functions.h"
#include "scheduler/pipeline_layout.h"

namespace dynamoe::scheduler {

// send_rows: this rank's rows in the layout's send order. Returns the expert
// outputs for them in the same order. Differentiable in send_rows and the
// parameters (own experts, then the copies of layout.slot_experts). Forward
// phase times (dispatch, experts, combine) are added to *times when given.
at::Tensor OverlappedExperts(const at::Tensor& send_rows, const ExpertParams& params,
                             std::shared_ptr<const PipelineLayout> layout, const runtime::CommunicatorPtr& comm,
                             const std::string& layer, monitor::PhaseTimes* times);

}  // namespace dynamoe::scheduler
