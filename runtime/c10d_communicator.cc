#include "runtime/c10d_communicator.h"

#include <ATen/ATen.h>
// C++ jobs (InitFromEnv) build their Gloo groups with torch's own
// ProcessGroupGloo. Its header includes Gloo's, which pip wheels do not ship;
// Debian's libgloo-dev provides them (the header meets Gloo's types by
// pointer only, so another Gloo snapshot's headers serve; every C++
// multi-process test runs on them). Without them the Gloo group reports itself
// unavailable; Python jobs never need it (they bring their own group).
#if __has_include(<gloo/algorithm.h>)
#define DYNAMOE_HAVE_GLOO 1
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

#include "absl/strings/str_cat.h"

namespace dynamoe::runtime {
namespace {

bool Is16Bit(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

// Data movement is a bit copy: bfloat16 travels as float16 bits, which Gloo
// moves (Gloo in torch 1.x has neither bfloat16 nor int16).
at::Tensor Wire(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? t.view(at::kHalf) : t; }

}  // namespace

C10dCommunicator::C10dCommunicator(c10::intrusive_ptr<c10d::ProcessGroup> group, c10::intrusive_ptr<c10d::Store> store,
                                              GroupInfo info, bool owned)
    : TrackedCommunicator(store, std::move(info)),
      owned_(owned ? group : c10::intrusive_ptr<c10d::ProcessGroup>()),
      callers_(owned ? c10::intrusive_ptr<c10d::ProcessGroup>() : group) {}

C10dCommunicator::~C10dCommunicator() {
  // After a failure the backend's threads may be blocked on a dead peer until
  // its own timeout; destroying it would join them. Leak it so the process
  // can exit with the error now.
  if (failed() && owned_) (void)owned_.release();
}

std::unique_ptr<CommHandle> C10dCommunicator::Launch(const char* op, const CollectiveTag& tag, const Start& start,
                                                     std::function<void()> after) {
  auto pending = Track(op, tag);
  c10::intrusive_ptr<c10d::Work> work;
  if (pending) {
    const c10::intrusive_ptr<c10d::ProcessGroup> group = owned_ ? owned_ : callers_.lock();
    if (!group) {
      pending->Finish(PendingCollective::State::kFailed,
                      "its torch.distributed group was destroyed (destroy_process_group) while a dynamoe layer "
                      "still runs on it");
    } else {
      try {
        work = start(*group);
        work->getFuture()->addCallback([pending](c10::ivalue::Future& f) {
          if (f.hasError())
            pending->Finish(PendingCollective::State::kFailed, f.tryRetrieveErrorMessage());
          else
            pending->Finish(PendingCollective::State::kDone);
        });
      } catch (const std::exception& e) {
        pending->Finish(PendingCollective::State::kFailed, e.what());
      }
    }
  }
  // An NCCL group's future completes once the work is queued on its stream:
  // wait() orders the caller's current stream after it (Gloo's is done already).
  std::function<void()> done = [work, after = std::move(after)] {
    if (work) work->wait();
    if (after) after();
  };
  return Handle(op, tag, std::move(pending), std::move(done));
}

std::unique_ptr<CommHandle> C10dCommunicator::Sum(
    const char* op, const at::Tensor& tensor, const CollectiveTag& tag,
    const std::function<c10::intrusive_ptr<c10d::Work>(c10d::ProcessGroup&, at::Tensor&)>& start) {
  at::Tensor buffer = Is16Bit(tensor) ? tensor.to(at::kFloat) : tensor;
  std::function<void()> after;
  if (Is16Bit(tensor)) after = [tensor, buffer]() mutable { tensor.copy_(buffer); };
  return Launch(op, tag, [&](c10d::ProcessGroup& g) { return start(g, buffer); }, std::move(after));
}

std::unique_ptr<CommHandle> C10dCommunicator::AllGatherAsync(const at::Tensor& input, const at::Tensor& output,
                                                             const CollectiveTag& tag) {
  return Launch("all_gather", tag, [&](c10d::ProcessGroup& g) {
    const int64_t n = input.size(0);
    std::vector<at::Tensor> in = {Wire(input)};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < size(); ++r) out[0].push_back(Wire(output.narrow(0, r * n, n)));
    return g.allgather(out, in);
  });
}

std::unique_ptr<CommHandle> C10dCommunicator::AllToAllAsync(const at::Tensor& input, const at::Tensor& output,
                                                            const std::vector<int64_t>& send_rows,
                                                            const std::vector<int64_t>& recv_rows,
                                                            const CollectiveTag& tag) {
  CountAllToAll(input, send_rows, recv_rows);
  return Launch("all_to_all", tag, [&](c10d::ProcessGroup& g) {
    at::Tensor in = Wire(input), out = Wire(output);
    std::vector<int64_t> send = send_rows, recv = recv_rows;
    return g.alltoall_base(out, in, recv, send);
  });
}

std::unique_ptr<CommHandle> C10dCommunicator::BroadcastAsync(const at::Tensor& tensor, int root,
                                                             const CollectiveTag& tag) {
  return Launch("broadcast", tag, [&](c10d::ProcessGroup& g) {
    std::vector<at::Tensor> t = {Wire(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    return g.broadcast(t, opts);
  });
}

std::unique_ptr<CommHandle> C10dCommunicator::ReduceAsync(const at::Tensor& tensor, int root,
                                                          const CollectiveTag& tag) {
  return Sum("reduce", tensor, tag, [&](c10d::ProcessGroup& g, at::Tensor& buffer) {
    std::vector<at::Tensor> t = {buffer};
    c10d::ReduceOptions opts;
    opts.rootRank = root;
    return g.reduce(t, opts);
  });
}

std::unique_ptr<CommHandle> C10dCommunicator::AllReduceAsync(const at::Tensor& tensor, const CollectiveTag& tag) {
  return Sum("all_reduce", tensor, tag, [&](c10d::ProcessGroup& g, at::Tensor& buffer) {
    std::vector<at::Tensor> t = {buffer};
    return g.allreduce(t);
  });
}

std::unique_ptr<CommHandle> C10dCommunicator::BarrierAsync(const CollectiveTag& tag) {
  return Launch("barrier", tag, [&](c10d::ProcessGroup& g) { return g.barrier(); });
}

absl::StatusOr<CommunicatorPtr> MakeGlooCommunicator(const c10::intrusive_ptr<c10d::Store>& store,
                                                     const GroupInfo& info, const std::string& bind_addr) {
#ifndef DYNAMOE_HAVE_GLOO
  (void)store;
  (void)bind_addr;
  return absl::UnimplementedError(absl::StrCat("group '", info.name, "': this build has no Gloo (torch was ",
                                               "installed without Gloo's headers); use the NCCL backend"));
#else
  // Gloo's own timeout only unblocks its threads after ours has reported.
  auto opts = c10d::ProcessGroupGloo::Options::create(info.timeout * 2 + std::chrono::seconds(5));
  opts->threads = 2;
  bool device_made = false;
  try {
    opts->devices.push_back(bind_addr.empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                                              : c10d::ProcessGroupGloo::createDeviceForHostname(bind_addr));
    device_made = true;
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, info.rank, info.size, opts);
    GroupInfo gloo_info = info;
    gloo_info.backend = "gloo";
    // Wrapped in a c10d::ProcessGroup as torch.distributed wraps its own, so a
    // C++ job runs on the class that the caller's groups reach dynamoe as
    // (process_group_communicator.h). Gloo serves CUDA tensors too.
    auto group = c10::make_intrusive<c10d::ProcessGroup>(store, info.rank, info.size);
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    for (c10::DeviceType device : {c10::DeviceType::CPU, c10::DeviceType::CUDA})
      group->setBackend(device, c10d::ProcessGroup::BackendType::GLOO, pg);
    return CommunicatorPtr(
        c10::make_intrusive<C10dCommunicator>(std::move(group), store, gloo_info));
  } catch (const std::exception& e) {
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);  // its what() carries a backtrace
    const std::string bad_addr =
        device_made || bind_addr.empty()
            ? ""
            : absl::StrCat(": DYNAMOE_COMM_ADDR=\"", bind_addr, "\" cannot be resolved or bound on this host ",
                           "(unset it to use the one that reaches MASTER_ADDR)");
    return absl::UnavailableError(absl::StrCat("creating the Gloo group '", info.name, "' (rank ", info.rank, " of ",
                                               info.size, ") failed", bad_addr, ": ",
                                               c10_error ? c10_error->what_without_backtrace() : e.what()));
  }
#endif
}

}  // namespace dynamoe::runtime
