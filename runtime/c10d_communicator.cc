#include "runtime/c10d_communicator.h"

#include <ATen/ATen.h>
// pip wheels of torch 2.x ship c10d's Gloo header without Gloo's own headers:
// there the Gloo group reports itself unavailable (NCCL serves the GPU).
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

C10dCommunicator::C10dCommunicator(c10::intrusive_ptr<C10dBackend> backend, c10::intrusive_ptr<c10d::Store> store,
                                   GroupInfo info)
    : TrackedCommunicator(store, std::move(info)), backend_(std::move(backend)) {}

C10dCommunicator::~C10dCommunicator() {
  // After a failure the backend's threads may be blocked on a dead peer until
  // its own timeout; destroying it would join them. Leak it so the process
  // can exit with the error now.
  if (failed()) (void)backend_.release();
}

std::unique_ptr<CommHandle> C10dCommunicator::Launch(const char* op, const CollectiveTag& tag, const Start& start,
                                                     std::function<void()> after) {
  auto pending = Track(op, tag);
  if (pending) {
    try {
      c10::intrusive_ptr<c10d::Work> work = start();
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
  return Handle(op, tag, std::move(pending), std::move(after));
}

std::unique_ptr<CommHandle> C10dCommunicator::Sum(
    const char* op, const at::Tensor& tensor, const CollectiveTag& tag,
    const std::function<c10::intrusive_ptr<c10d::Work>(at::Tensor&)>& start) {
  at::Tensor buffer = Is16Bit(tensor) ? tensor.to(at::kFloat) : tensor;
  std::function<void()> after;
  if (Is16Bit(tensor)) after = [tensor, buffer]() mutable { tensor.copy_(buffer); };
  return Launch(op, tag, [&] { return start(buffer); }, std::move(after));
}

std::unique_ptr<CommHandle> C10dCommunicator::AllGatherAsync(const at::Tensor& input, const at::Tensor& output,
                                                             const CollectiveTag& tag) {
  return Launch("all_gather", tag, [&] {
    const int64_t n = input.size(0);
    std::vector<at::Tensor> in = {Wire(input)};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < size(); ++r) out[0].push_back(Wire(output.narrow(0, r * n, n)));
    return backend_->allgather(out, in);
  });
}

std::unique_ptr<CommHandle> C10dCommunicator::AllToAllAsync(const at::Tensor& input, const at::Tensor& output,
                                                            const std::vector<int64_t>& send_rows,
                                                            const std::vector<int64_t>& recv_rows,
                                                            const CollectiveTag& tag) {
  CountAllToAll(input, send_rows, recv_rows);
  return Launch("all_to_all", tag, [&] {
    at::Tensor in = Wire(input), out = Wire(output);
    std::vector<int64_t> send = send_rows, recv = recv_rows;
    return backend_->alltoall_base(out, in, recv, send);
  });
}

std::unique_ptr<CommHandle> C10dCommunicator::BroadcastAsync(const at::Tensor& tensor, int root,
                                                             const CollectiveTag& tag) {
  return Launch("broadcast", tag, [&] {
    std::vector<at::Tensor> t = {Wire(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    return backend_->broadcast(t, opts);
  });
}

std::unique_ptr<CommHandle> C10dCommunicator::ReduceAsync(const at::Tensor& tensor, int root,
                                                          const CollectiveTag& tag) {
  return Sum("reduce", tensor, tag, [&](at::Tensor& buffer) {
    std::vector<at::Tensor> t = {buffer};
    c10d::ReduceOptions opts;
    opts.rootRank = root;
    return backend_->reduce(t, opts);
  });
}

std::unique_ptr<CommHandle> C10dCommunicator::AllReduceAsync(const at::Tensor& tensor, const CollectiveTag& tag) {
  return Sum("all_reduce", tensor, tag, [&](at::Tensor& buffer) {
    std::vector<at::Tensor> t = {buffer};
    return backend_->allreduce(t);
  });
}

std::unique_ptr<CommHandle> C10dCommunicator::BarrierAsync(const CollectiveTag& tag) {
  return Launch("barrier", tag, [&] { return backend_->barrier(); });
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
    return CommunicatorPtr(c10::make_intrusive<C10dCommunicator>(std::move(pg), store, gloo_info));
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
