// NcclCommunicator: the GPU fast path. A raw NCCL communicator with its own
// stream; the unique id travels through the group's store. Completion is
// signalled by a host function enqueued after the collective; at the
// deadline the control thread aborts the communicator (ncclCommAbort), which
// unblocks every pending operation. Built only when CUDA and NCCL are found.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <functional>

#include "absl/status/statusor.h"
#include "runtime/tracked_communicator.h"

namespace dynamoe::runtime {

class NcclCommunicator : public TrackedCommunicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, c10::intrusive_ptr<c10d::Store> store, GroupInfo info);
  ~NcclCommunicator() override;

  // Collectives wait for work already queued on `stream` (default: the legacy
  // default stream) and Wait() makes it wait for the collective.
  void set_compute_stream(cudaStream_t stream) { compute_stream_ = stream; }

  std::unique_ptr<CommHandle> AllGatherAsync(const at::Tensor& input, const at::Tensor& output,
                                             const CollectiveTag& tag) override;
  std::unique_ptr<CommHandle> AllToAllAsync(const at::Tensor& input, const at::Tensor& output,
                                            const std::vector<int64_t>& send_rows,
                                            const std::vector<int64_t>& recv_rows,
                                            const CollectiveTag& tag) override;
  std::unique_ptr<CommHandle> BroadcastAsync(const at::Tensor& tensor, int root, const CollectiveTag& tag) override;
  std::unique_ptr<CommHandle> ReduceAsync(const at::Tensor& tensor, int root, const CollectiveTag& tag) override;
  std::unique_ptr<CommHandle> AllReduceAsync(const at::Tensor& tensor, const CollectiveTag& tag) override;
  std::unique_ptr<CommHandle> BarrierAsync(const CollectiveTag& tag) override;

 private:
  // Enqueues `body` (NCCL calls on stream_) under a deadline.
  std::unique_ptr<CommHandle> Launch(const char* op, const CollectiveTag& tag,
                                     const std::function<ncclResult_t(cudaStream_t)>& body);

  ncclComm_t comm_;
  int device_;
  cudaStream_t stream_ = nullptr;
  cudaStream_t compute_stream_ = nullptr;
  void* scratch_ = nullptr;  // barrier payload
  std::atomic<bool> aborted_{false};
  // Held while a launch checks the state and enqueues, and by the abort: no
  // collective is ever enqueued on a communicator being aborted.
  std::mutex launch_mu_;
  // Collectives enqueued and not yet finished on the stream (decremented by
  // the stream's host callback, which may outlive this object).
  std::shared_ptr<std::atomic<int>> queued_ = std::make_shared<std::atomic<int>>(0);
};

// Exchanges the NCCL unique id through `store` and creates the communicator
// on the current CUDA device.
absl::StatusOr<CommunicatorPtr> MakeNcclCommunicator(const c10::intrusive_ptr<c10d::Store>& store,
                                                     const GroupInfo& info);

}  // namespace dynamoe::runtime
