// Row-major grouped GEMM mapped onto column-major cuBLAS: a row-major
// X[r, c] is the column-major X^T, so C = A B is computed as C^T = B^T A^T.
#include "kernels/cuda/grouped_gemm.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace dynamoe::kernels::cuda {
namespace {

cudaDataType_t CudaType(DType t) {
  switch (t) {
    case DType::kFloat: return CUDA_R_32F;
    case DType::kDouble: return CUDA_R_64F;
    case DType::kBFloat16: return CUDA_R_16BF;
    case DType::kHalf: return CUDA_R_16F;
  }
  return CUDA_R_32F;
}
size_t Bytes(DType t) { return t == DType::kDouble ? 8 : t == DType::kFloat ? 4 : 2; }

#define DYNAMOE_CUBLAS_RETURN_IF_ERROR(expr)                                                              \
  do {                                                                                                    \
    cublasStatus_t dynamoe_st_ = (expr);                                                                  \
    if (dynamoe_st_ != CUBLAS_STATUS_SUCCESS)                                                             \
      return absl::InternalError(absl::StrCat(#expr, " failed: ", cublasGetStatusString(dynamoe_st_)));   \
  } while (0)

// One column-major problem: C(m x n) = op(A)(m x k) op(B)(k x n).
struct Problem {
  cublasOperation_t ta, tb;
  int m, n, k, lda, ldb, ldc;
  const void *a, *b;
  void* c;
};

const char* OpName(GemmOp op) { return op == GemmOp::kNN ? "NN" : op == GemmOp::kNT ? "NT" : "TN"; }

}  // namespace

size_t GroupedGemmWorkspaceBytes(int groups, GemmAlgo algo) {
  return algo == GemmAlgo::kGrouped ? 3 * sizeof(void*) * static_cast<size_t>(groups) : 0;
}

absl::Status RunGroupedGemm(cublasHandle_t handle, const GroupedGemm& g, GemmAlgo algo, void* workspace,
                            size_t workspace_bytes, cudaStream_t stream) {
  DYNAMOE_CHECK_ARG(g.groups >= 0 && g.rows != nullptr, "grouped GEMM ", OpName(g.op),
                    ": expected groups >= 0 and host row counts, got groups=", g.groups);
  DYNAMOE_CHECK_ARG(g.k > 0 && g.n > 0 && g.k < (1ll << 31) && g.n < (1ll << 31), "grouped GEMM ", OpName(g.op),
                    ": k and n must be in [1, 2^31), got k=", g.k, " n=", g.n);
  DYNAMOE_CHECK_ARG(g.c == g.ab || (g.c == DType::kFloat && g.ab != DType::kDouble), "grouped GEMM ", OpName(g.op),
                    ": C must have the A/B type, or float for 16-bit A/B");
  DYNAMOE_CHECK_ARG(g.op == GemmOp::kTN || g.beta == 0.0f, "grouped GEMM: beta is only for the TN (weight) form");
  DYNAMOE_CHECK_ARG(workspace_bytes >= GroupedGemmWorkspaceBytes(g.groups, algo),
                    "grouped GEMM: workspace of ", GroupedGemmWorkspaceBytes(g.groups, algo), " bytes needed, got ",
                    workspace_bytes);
  const size_t eab = Bytes(g.ab), ec = Bytes(g.c);
  const char* a = static_cast<const char*>(g.a);
  const char* b = static_cast<const char*>(g.b);
  char* c = static_cast<char*>(g.out);
  const int K = static_cast<int>(g.k), N = static_cast<int>(g.n);

  std::vector<Problem> problems;
  int64_t off = 0;
  for (int i = 0; i < g.groups; ++i) {
    const int64_t m = g.rows[i];
    DYNAMOE_CHECK_ARG(m >= 0 && m < (1ll << 31), "grouped GEMM: rows of group ", i, " must be in [0, 2^31), got ", m);
    const int M = static_cast<int>(m);
    switch (g.op) {
      case GemmOp::kNN:  // C^T(N x M) = B_g^T(N x K) A^T(K x M)
        if (M > 0)
          problems.push_back({CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, N, K, N, b + i * g.k * g.n * eab, a + off * K * eab,
                              c + off * N * ec});
        break;
      case GemmOp::kNT:  // C^T(K x M) = B_g(K x N) A^T(N x M)
        if (M > 0)
          problems.push_back({CUBLAS_OP_T, CUBLAS_OP_N, K, M, N, N, N, K, b + i * g.k * g.n * eab, a + off * N * eab,
                              c + off * K * ec});
        break;
      case GemmOp::kTN: {  // C_g^T(N x K) = B^T(N x M) A(M x K)
        char* cg = c + i * g.k * g.n * ec;
        if (M > 0)
          problems.push_back({CUBLAS_OP_N, CUBLAS_OP_T, N, K, M, N, K, N, b + off * N * eab, a + off * K * eab, cg});
        else if (g.beta == 0.0f)  // an expert without rows has a zero gradient
          DYNAMOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(cg, 0, g.k * g.n * ec, stream));
        break;
      }
    }
    off += m;
  }
  if (problems.empty()) return absl::OkStatus();
  DYNAMOE_CUBLAS_RETURN_IF_ERROR(cublasSetStream(handle, stream));
  const bool wide = g.ab == DType::kDouble;
  const double alpha64 = 1.0, beta64 = g.beta;
  const float alpha32 = 1.0f, beta32 = g.beta;
  const void* alpha = wide ? static_cast<const void*>(&alpha64) : &alpha32;
  const void* beta = wide ? static_cast<const void*>(&beta64) : &beta32;
  const cublasComputeType_t compute = wide ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  const cudaDataType_t tab = CudaType(g.ab), tc = CudaType(g.c);
  if (algo == GemmAlgo::kLoop) {
    for (const Problem& p : problems)
      DYNAMOE_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(handle, p.ta, p.tb, p.m, p.n, p.k, alpha, p.a, tab, p.lda, p.b, tab,
                                                  p.ldb, beta, p.c, tc, p.ldc, compute, CUBLAS_GEMM_DEFAULT));
    return absl::OkStatus();
  }
  // One call: every problem is its own group of size 1 (shapes differ).
  const int count = static_cast<int>(problems.size());
  std::vector<cublasOperation_t> ta(count), tb(count);
  std::vector<int> m(count), n(count), k(count), lda(count), ldb(count), ldc(count), size(count, 1);
  std::vector<const void*> pa(count), pb(count);
  std::vector<void*> pc(count);
  std::vector<double> alphas64(count, 1.0), betas64(count, g.beta);
  std::vector<float> alphas32(count, 1.0f), betas32(count, g.beta);
  for (int i = 0; i < count; ++i) {
    const Problem& p = problems[i];
    ta[i] = p.ta, tb[i] = p.tb, m[i] = p.m, n[i] = p.n, k[i] = p.k, lda[i] = p.lda, ldb[i] = p.ldb, ldc[i] = p.ldc;
    pa[i] = p.a, pb[i] = p.b, pc[i] = p.c;
  }
  // The pointer arrays live on the device; a pageable copy is staged before it returns.
  void** dev = static_cast<void**>(workspace);
  DYNAMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dev, pa.data(), sizeof(void*) * count, cudaMemcpyHostToDevice, stream));
  DYNAMOE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dev + count, pb.data(), sizeof(void*) * count, cudaMemcpyHostToDevice, stream));
  DYNAMOE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dev + 2 * count, pc.data(), sizeof(void*) * count, cudaMemcpyHostToDevice, stream));
  DYNAMOE_CUBLAS_RETURN_IF_ERROR(cublasGemmGroupedBatchedEx(
      handle, ta.data(), tb.data(), m.data(), n.data(), k.data(),
      wide ? static_cast<const void*>(alphas64.data()) : alphas32.data(), dev, tab, lda.data(), dev + count, tab,
      ldb.data(), wide ? static_cast<const void*>(betas64.data()) : betas32.data(), dev + 2 * count, tc, ldc.data(),
      count, size.data(), compute));
  return absl::OkStatus();
}

}  // namespace dynamoe::kernels::cuda
