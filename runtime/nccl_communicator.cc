#include "runtime/nccl_communicator.h"

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace dynamoe::runtime {
namespace {

absl::StatusOr<ncclDataType_t> NcclType(const at::Tensor& t) {
  if (!t.is_cuda())
    return absl::InvalidArgumentError(absl::StrCat("NCCL moves CUDA tensors only; got one on ", t.device().str()));
  switch (t.scalar_type()) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    case at::kLong: return ncclInt64;
    case at::kInt: return ncclInt32;
    case at::kByte: return ncclUint8;
    case at::kChar: return ncclInt8;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("NCCL cannot move dtype ", c10::toString(t.scalar_type())));
  }
}

std::string CudaError(cudaError_t e) { return absl::StrCat("CUDA error ", cudaGetErrorString(e)); }
std::string NcclError(ncclResult_t r) { return absl::StrCat("NCCL error ", ncclGetErrorString(r)); }

struct Enqueued {
  std::shared_ptr<PendingCollective> pending;
  std::shared_ptr<std::atomic<int>> queued;
};

void CUDART_CB HostDone(void* data) {
  auto* done = static_cast<Enqueued*>(data);
  done->pending->Finish(PendingCollective::State::kDone);
  --*done->queued;
  delete done;
}

}  // namespace

NcclCommunicator::NcclCommunicator(ncclComm_t comm, int device, c10::intrusive_ptr<c10d::Store> store,
                                   GroupInfo info)
    : TrackedCommunicator(store, std::move(info)), comm_(comm), device_(device) {
  cudaSetDevice(device_);
  cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
  cudaMalloc(&scratch_, sizeof(float));
}

NcclCommunicator::~NcclCommunicator() {
  if (aborted_) return;  // the communicator is gone; its stream may be wedged
  // ncclCommDestroy waits for outstanding work, which a failed or lost peer
  // never finishes: abort instead, so the destructor cannot block.
  if (failed() || *queued_ > 0) {
    ncclCommAbort(comm_);
    return;
  }
  ncclCommDestroy(comm_);
  cudaFree(scratch_);
  cudaStreamDestroy(stream_);
}

std::unique_ptr<CommHandle> NcclCommunicator::Launch(const char* op, const CollectiveTag& tag,
                                                     const std::function<ncclResult_t(cudaStream_t)>& body) {
  auto self = c10::intrusive_ptr<NcclCommunicator>::unsafe_reclaim_from_nonowning(this);
  auto pending = Track(op, tag, [self] {
    // Unblocks the stream and every rank-local wait on this communicator;
    // marked failed first, so no collective is launched on it afterwards.
    self->MarkFailed();
    std::lock_guard<std::mutex> lock(self->launch_mu_);  // no launch is half-way through
    if (!self->aborted_.exchange(true)) ncclCommAbort(self->comm_);
  });
  if (!pending) return Handle(op, tag, nullptr);
  std::lock_guard<std::mutex> lock(launch_mu_);
  if (aborted_) {  // an earlier collective's deadline aborted it since Track
    pending->Finish(PendingCollective::State::kFailed, "the communicator was aborted by an earlier deadline");
    return Handle(op, tag, std::move(pending));
  }
  cudaSetDevice(device_);
  cudaEvent_t ready;
  cudaEventCreateWithFlags(&ready, cudaEventDisableTiming);
  cudaEventRecord(ready, compute_stream_);
  cudaStreamWaitEvent(stream_, ready, 0);
  cudaEventDestroy(ready);
  const ncclResult_t r = body(stream_);
  if (r != ncclSuccess) {
    MarkFailed();
    pending->Finish(PendingCollective::State::kFailed, NcclError(r));
    return Handle(op, tag, std::move(pending));
  }
  ++*queued_;
  cudaEvent_t done = nullptr;
  cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
  cudaEventRecord(done, stream_);
  auto* enqueued = new Enqueued{pending, queued_};
  const cudaError_t e = cudaLaunchHostFunc(stream_, HostDone, enqueued);
  if (e != cudaSuccess) {  // the collective is queued but nothing will report it: never destroy under it
    delete enqueued;
    MarkFailed();
    pending->Finish(PendingCollective::State::kFailed, CudaError(e));
  }
  // Once done, the caller's stream waits for the collective.
  auto order = [this, done] { cudaStreamWaitEvent(compute_stream_, done, 0); };
  return Handle(op, tag, std::move(pending), order, [done] { cudaEventDestroy(done); }, order);
}

#define DYNAMOE_NCCL_TYPE(var, tensor)                                                           \
  auto var##_or = NcclType(tensor);                                                              \
  if (!var##_or.ok()) {                                                                          \
    DYNAMOE_LOG(kError) << tag.layer << ": " << var##_or.status().message();                     \
    return Launch(#var, tag, [](cudaStream_t) { return ncclInvalidArgument; });                  \
  }                                                                                              \
  const ncclDataType_t var = *var##_or

std::unique_ptr<CommHandle> NcclCommunicator::AllGatherAsync(const at::Tensor& input, const at::Tensor& output,
                                                             const CollectiveTag& tag) {
  DYNAMOE_NCCL_TYPE(type, input);
  return Launch("all_gather", tag, [&](cudaStream_t s) {
    return ncclAllGather(input.data_ptr(), output.data_ptr(), input.numel(), type, comm_, s);
  });
}

std::unique_ptr<CommHandle> NcclCommunicator::AllToAllAsync(const at::Tensor& input, const at::Tensor& output,
                                                            const std::vector<int64_t>& send_rows,
                                                            const std::vector<int64_t>& recv_rows,
                                                            const CollectiveTag& tag) {
  DYNAMOE_NCCL_TYPE(type, input);
  const int64_t row = input.dim() > 1 ? input.stride(0) : 1;
  CountAllToAll(input, send_rows, recv_rows);
  return Launch("all_to_all", tag, [&](cudaStream_t s) {
    const char* in = static_cast<const char*>(input.data_ptr());
    char* out = static_cast<char*>(output.data_ptr());
    const int64_t bytes = row * input.element_size();
    ncclResult_t r = ncclGroupStart();
    int64_t send_off = 0, recv_off = 0;
    for (int peer = 0; peer < size() && r == ncclSuccess; ++peer) {
      if (send_rows[peer] > 0) r = ncclSend(in + send_off * bytes, send_rows[peer] * row, type, peer, comm_, s);
      if (r == ncclSuccess && recv_rows[peer] > 0)
        r = ncclRecv(out + recv_off * bytes, recv_rows[peer] * row, type, peer, comm_, s);
      send_off += send_rows[peer];
      recv_off += recv_rows[peer];
    }
    const ncclResult_t end = ncclGroupEnd();
    return r != ncclSuccess ? r : end;
  });
}

std::unique_ptr<CommHandle> NcclCommunicator::BroadcastAsync(const at::Tensor& tensor, int root,
                                                             const CollectiveTag& tag) {
  DYNAMOE_NCCL_TYPE(type, tensor);
  return Launch("broadcast", tag, [&](cudaStream_t s) {
    return ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), type, root, comm_, s);
  });
}

std::unique_ptr<CommHandle> NcclCommunicator::ReduceAsync(const at::Tensor& tensor, int root,
                                                          const CollectiveTag& tag) {
  DYNAMOE_NCCL_TYPE(type, tensor);
  return Launch("reduce", tag, [&](cudaStream_t s) {
    return ncclReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), type, ncclSum, root, comm_, s);
  });
}

std::unique_ptr<CommHandle> NcclCommunicator::AllReduceAsync(const at::Tensor& tensor, const CollectiveTag& tag) {
  DYNAMOE_NCCL_TYPE(type, tensor);
  return Launch("all_reduce", tag, [&](cudaStream_t s) {
    return ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), type, ncclSum, comm_, s);
  });
}

std::unique_ptr<CommHandle> NcclCommunicator::BarrierAsync(const CollectiveTag& tag) {
  return Launch("barrier", tag, [&](cudaStream_t s) {
    return ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, s);
  });
}

absl::StatusOr<CommunicatorPtr> MakeNcclCommunicator(const c10::intrusive_ptr<c10d::Store>& store,
                                                     const GroupInfo& info) {
  ncclUniqueId id;
  try {
    if (info.rank == 0) {
      if (ncclGetUniqueId(&id) != ncclSuccess) return absl::UnavailableError("ncclGetUniqueId failed");
      const auto* p = reinterpret_cast<const uint8_t*>(&id);
      store->set("nccl_unique_id", std::vector<uint8_t>(p, p + sizeof(id)));
    } else {
      store->wait({"nccl_unique_id"}, info.timeout);
      const std::vector<uint8_t> raw = store->get("nccl_unique_id");
      if (raw.size() != sizeof(id)) return absl::DataLossError("malformed NCCL unique id in the store");
      std::memcpy(&id, raw.data(), sizeof(id));
    }
  } catch (const std::exception& e) {
    return absl::DeadlineExceededError(absl::StrCat("group '", info.name, "': exchanging the NCCL id: ", e.what()));
  }
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return absl::UnavailableError("no CUDA device for NCCL");
  ncclComm_t comm;
  const ncclResult_t r = ncclCommInitRank(&comm, info.size, id, info.rank);
  if (r != ncclSuccess)
    return absl::UnavailableError(absl::StrCat("group '", info.name, "': ncclCommInitRank: ", NcclError(r)));
  GroupInfo nccl_info = info;
  nccl_info.backend = "nccl";
  return CommunicatorPtr(c10::make_intrusive<NcclCommunicator>(comm, device, store, nccl_info));
}

}  // namespace dynamoe::runtime
