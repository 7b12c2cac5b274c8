// Where every row goes in the overlapped schedule (DYNAMOE_SCHEDULE=overlap).
//
// A rank's peers are taken by offset: at offset o it sends to rank
// (rank + o) % P and receives from (rank - o) % P, so both ends of a pair
// agree on when they meet. Offsets 1..P-1 form groups of `group_size`; each
// group's rows are cut into `degree` token chunks, and stage g * degree + c
// moves chunk c of group g. The rows a rank keeps (offset 0: its own experts
// and the copies it holds) are the local unit, computed while stage 0 travels.
//
// The send buffer is in "send order": the local block, then each stage's
// rows by destination rank; chunk c of the n rows for one destination is
// rows [n c / degree, n (c + 1) / degree) of its expert-ordered block, so the
// receiver cuts the same ranges from the count matrix alone. Outputs come
// back into the same layout.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "placement/plan.h"
#include "scheduler/row_order.h"

namespace dynamoe::scheduler {

// One unit of expert work on this rank: the local block or one stage.
struct PipelineUnit {
  int64_t send_offset = 0, send_total = 0;  // this rank's rows, in the send-order buffer
  std::vector<int64_t> send_splits, recv_splits;  // per rank (stages only)
  int64_t recv_total = 0;                    // rows this rank computes in the unit
  at::Tensor to_slot_major;    // [recv_total] arrivals (source-major) -> slot-major (undefined: identity)
  at::Tensor to_source_major;  // its inverse
  at::Tensor slot_counts;      // [slots] int64
  bool idle = false;           // no rank moves a row in this stage: every rank skips it
};

struct PipelineLayout {
  int64_t group_size = 1, groups = 0, degree = 1;
  PipelineUnit local;
  std::vector<PipelineUnit> stages;  // group-major, chunk-minor
  at::Tensor to_send_order;    // expert-sorted rows -> send order (undefined: identity)
  at::Tensor from_send_order;  // its inverse
  std::vector<int64_t> slot_experts;  // global expert of each slot (own experts, then copies)
};

// group_size clamped to [1, P - 1], and the number of peer groups it makes.
int64_t ClampGroupSize(int64_t group_size, int64_t world_size);
int64_t PeerGroups(int64_t group_size, int64_t world_size);

// group_size is clamped to [1, P - 1]; degree must be >= 1.
PipelineLayout MakePipelineLayout(const at::Tensor& kept_matrix, int rank, const placement::Plan& plan,
                                  int64_t group_size, int64_t degree);


}  // namespace dynamoe::scheduler
