// Grouped expert GEMM over variable row counts per expert, through cuBLAS.
// Row-major operands; group g covers rows [off_g, off_g + m_g) of the
// row-stacked operands, off_g = m_0 + ... + m_{g-1}:
//   kNN  C[off_g.., N]  = A[off_g.., K] . B_g[K, N]          (expert forward)
//   kNT  C[off_g.., K]  = A[off_g.., N] . B_g[K, N]^T        (data gradient)
//   kTN  C_g[K, N] = beta C_g + A[off_g.., K]^T . B[off_g.., N] (weight gradient)
// Two algorithms: one cublasGemmEx per non-empty group, or a single
// cublasGemmGroupedBatchedEx call. Both give the same result up to the
// library's choice of kernel; bench/bench_cuda_layer.py measures them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

typedef struct CUstream_st* cudaStream_t;
typedef struct cublasContext* cublasHandle_t;

namespace dynamoe::kernels::cuda {

enum class DType { kFloat, kDouble, kBFloat16, kHalf };
enum class GemmOp { kNN, kNT, kTN };
enum class GemmAlgo { kLoop, kGrouped };

struct GroupedGemm {
  GemmOp op = GemmOp::kNN;
  DType ab = DType::kFloat;  // A and B element type
  DType c = DType::kFloat;   // C element type (float C with 16-bit A/B accumulates wide)
  int groups = 0;
  const int64_t* rows = nullptr;  // host [groups]: m_g
  int64_t k = 0, n = 0;
  const void* a = nullptr;
  const void* b = nullptr;
  void* out = nullptr;
  float beta = 0.0f;  // kTN only: 1 accumulates into C
};

// Device bytes the kGrouped algorithm needs (pointer arrays); 0 for kLoop.
size_t GroupedGemmWorkspaceBytes(int groups, GemmAlgo algo);

// Runs on `stream` (the handle is bound to it). Parses and checks the
// problem; the workspace is device memory of GroupedGemmWorkspaceBytes.
absl::Status RunGroupedGemm(cublasHandle_t handle, const GroupedGemm& gemm, GemmAlgo algo, void* workspace,
                            size_t workspace_bytes, cudaStream_t stream);

}  // namespace dynamoe::kernels::cuda
