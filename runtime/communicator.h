// runtime::Communicator: the collectives an MoE step needs, each with an
// async form and a deadline (DYNAMOE_TIMEOUT_S). A collective that does not
// complete in time, or that the backend fails, returns an error naming the
// layer, phase, operation and the peer that caused it (see peer_monitor.h).
//
// Implementations: C10dCommunicator (torch c10d Gloo on CPU, NCCL on GPU) and
// NcclCommunicator (raw NCCL, GPU fast path; built with CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace dynamoe::runtime {

// Names a collective in errors: layer 'moe0' phase 'dispatch' (backward).
struct CollectiveTag {
  std::string layer = "dynamoe";
  std::string phase = "startup";  // a monitor::PhaseName, or "startup", "gradients"
  bool backward = false;
  std::string Describe() const;
};

// An in-flight collective; the tensors it uses must stay alive until Wait().
class CommHandle {
 public:
  virtual ~CommHandle() = default;
  // OK once completed; DeadlineExceeded / Unavailable / Aborted naming the
  // layer, phase and peer otherwise. Call at most once.
  virtual absl::Status Wait() = 0;
  // GPU backends: orders the caller's stream after the collective without
  // blocking the host and returns true; Wait() must still follow, later, to
  // report errors. Host backends return false: Wait() before reading output.
  virtual bool OrderAfter() { return false; }
};

// Counters since creation, for benchmarks and metrics.
struct CommCounters {
  int64_t collectives = 0;
  int64_t bytes_sent = 0;      // all-to-all payload to other ranks
  int64_t bytes_received = 0;  // all-to-all payload from other ranks
  double wait_seconds = 0;     // time callers spent in Wait()
  int64_t waits = 0;           // Wait() calls
  // Wait() calls on a collective that nothing started after it is still in
  // flight with (started, not yet waited): the caller waited on its newest
  // collective, a synchronous use. A pipeline makes one per run, however
  // many stages; one that waited inside its loop would make one per stage.
  int64_t idle_waits = 0;
};

// A group of ranks. Held by c10::intrusive_ptr (it is also the TorchBind class
// dynamoe.Communicator that Python passes to the ops).
class Communicator : public torch::CustomClassHolder {
 public:
  ~Communicator() override = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "gloo", "nccl"
  virtual std::string name() const = 0;     // "world", "ep0", ...
  // The world rank of a member, for messages.
  virtual int global_rank(int group_rank) const = 0;
  virtual CommCounters counters() const = 0;

  // output = concat over ranks of input along dim 0 ([size * n, ...]).
  virtual std::unique_ptr<CommHandle> AllGatherAsync(const at::Tensor& input, const at::Tensor& output,
                                                     const CollectiveTag& tag) = 0;
  // Rows [sum send_rows, ...] go out, send_rows[j] to rank j in rank order;
  // rows [sum recv_rows, ...] arrive, recv_rows[i] from rank i.
  virtual std::unique_ptr<CommHandle> AllToAllAsync(const at::Tensor& input, const at::Tensor& output,
                                                    const std::vector<int64_t>& send_rows,
                                                    const std::vector<int64_t>& recv_rows,
                                                    const CollectiveTag& tag) = 0;
  virtual std::unique_ptr<CommHandle> BroadcastAsync(const at::Tensor& tensor, int root,
                                                     const CollectiveTag& tag) = 0;
  // Sum into root's tensor (other ranks' tensors are left unspecified).
  virtual std::unique_ptr<CommHandle> ReduceAsync(const at::Tensor& tensor, int root,
                                                  const CollectiveTag& tag) = 0;
  // Sum in place on every rank.
  virtual std::unique_ptr<CommHandle> AllReduceAsync(const at::Tensor& tensor, const CollectiveTag& tag) = 0;
  virtual std::unique_ptr<CommHandle> BarrierAsync(const CollectiveTag& tag) = 0;

  // Blocking forms: the async form, then Wait().
  absl::Status AllGather(const at::Tensor& input, const at::Tensor& output, const CollectiveTag& tag) {
    return AllGatherAsync(input, output, tag)->Wait();
  }
  absl::Status AllToAll(const at::Tensor& input, const at::Tensor& output, const std::vector<int64_t>& send_rows,
                        const std::vector<int64_t>& recv_rows, const CollectiveTag& tag) {
    return AllToAllAsync(input, output, send_rows, recv_rows, tag)->Wait();
  }
  absl::Status Broadcast(const at::Tensor& tensor, int root, const CollectiveTag& tag) {
    return BroadcastAsync(tensor, root, tag)->Wait();
  }
  absl::Status Reduce(const at::Tensor& tensor, int root, const CollectiveTag& tag) {
    return ReduceAsync(tensor, root, tag)->Wait();
  }
  absl::Status AllReduce(const at::Tensor& tensor, const CollectiveTag& tag) {
    return AllReduceAsync(tensor, tag)->Wait();
  }
  absl::Status Barrier(const CollectiveTag& tag) { return BarrierAsync(tag)->Wait(); }
};

using CommunicatorPtr = c10::intrusive_ptr<Communicator>;

}  // namespace dynamoe::runtime
