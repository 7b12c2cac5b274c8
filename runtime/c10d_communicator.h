// C10dCommunicator: runtime::Communicator over a torch c10d backend (Gloo on
// CPU, NCCL on GPU). The backend runs the collective on its own threads or
// streams; its completion future, or the control thread's deadline timer,
// finishes the PendingCollective that Wait() blocks on.
#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/version.h>

#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
#else
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "runtime/tracked_communicator.h"

namespace dynamoe::runtime {

// The c10d type that runs collectives: ProcessGroup in torch 1.x, Backend
// (ProcessGroupGloo / ProcessGroupNCCL derive from it) in torch 2.x.
#if TORCH_VERSION_MAJOR >= 2
using C10dBackend = c10d::Backend;
#else
using C10dBackend = c10d::ProcessGroup;
#endif

class C10dCommunicator : public TrackedCommunicator {
 public:
  C10dCommunicator(c10::intrusive_ptr<C10dBackend> backend, c10::intrusive_ptr<c10d::Store> store,
                   GroupInfo info);
  ~C10dCommunicator() override;

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
  using Start = std::function<c10::intrusive_ptr<c10d::Work>()>;
  // Starts a collective under a deadline; `after` runs once it succeeded.
  std::unique_ptr<CommHandle> Launch(const char* op, const CollectiveTag& tag, const Start& start,
                                     std::function<void()> after = nullptr);
  // A sum of `tensor`: 16-bit floats are summed in an fp32 copy and written back.
  std::unique_ptr<CommHandle> Sum(const char* op, const at::Tensor& tensor, const CollectiveTag& tag,
                                  const std::function<c10::intrusive_ptr<c10d::Work>(at::Tensor&)>& start);

  c10::intrusive_ptr<C10dBackend> backend_;
};

// A Gloo group over `store` (already prefixed for this group). bind_addr:
// the address Gloo binds; empty resolves this host's name.
absl::StatusOr<CommunicatorPtr> MakeGlooCommunicator(const c10::intrusive_ptr<c10d::Store>& store,
                                                     const GroupInfo& info, const std::string& bind_addr);

}  // namespace dynamoe::runtime
