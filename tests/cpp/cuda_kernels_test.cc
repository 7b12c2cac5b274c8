// CUDA kernels against their CPU twins; skipped where no GPU is present.
#include <cuda_runtime.h>

#include <random>

#include <gtest/gtest.h>

#include "kernels/cuda/kernels_cuda.h"
#include "kernels/kernels.h"

namespace dynamoe::kernels {
namespace {

template <typename T>
T* ToDevice(const std::vector<T>& v) {
  T* p = nullptr;
  cudaMalloc(&p, sizeof(T) * std::max<size_t>(1, v.size()));
  cudaMemcpy(p, v.data(), sizeof(T) * v.size(), cudaMemcpyHostToDevice);
  return p;
}
template <typename T>
std::vector<T> ToHost(const T* p, size_t n) {
  std::vector<T> v(n);
  cudaMemcpy(v.data(), p, sizeof(T) * n, cudaMemcpyDeviceToHost);
  return v;
}

TEST(CudaKernels, MatchCpuTwins) {
  if (!cuda::DeviceAvailable()) GTEST_SKIP() << "no CUDA device: the CUDA kernels are compiled but not run here";
  std::mt19937 rng(1);
  const int64_t T = 300, E = 7, d = 33;
  const int k = 2;
  std::vector<int64_t> idx(T * k);
  for (int64_t t = 0; t < T; ++t) idx[t * k] = rng() % E, idx[t * k + 1] = (idx[t * k] + 1 + rng() % (E - 1)) % E;
  std::vector<int64_t> pos(T * k), kept(E), routed(E);
  int64_t dropped;
  RoutingOptions o;
  o.capacity = 70;
  ASSERT_TRUE(ComputeRouting(idx.data(), T, k, E, o, pos.data(), kept.data(), routed.data(), &dropped).ok());
  const int64_t N = T * k - dropped;
  std::vector<int64_t> assignment(N), token(N);
  ASSERT_TRUE(InvertPositions(pos.data(), T * k, N, assignment.data()).ok());
  for (int64_t p = 0; p < N; ++p) token[p] = assignment[p] / k;
  std::normal_distribution<float> normal;
  std::vector<float> x(T * d), w(T * k);
  for (auto& v : x) v = normal(rng);
  for (auto& v : w) v = normal(rng);
  std::vector<float> rows(N * d), out(T * d);
  GatherRows<float>(x.data(), token.data(), d, rows.data(), 0, N);
  CombineRows<float, float>(rows.data(), pos.data(), w.data(), k, d, out.data(), 0, T);

  int64_t *d_idx = ToDevice(idx), *d_counts = ToDevice(std::vector<int64_t>(E)), *d_token = ToDevice(token),
          *d_pos = ToDevice(pos);
  float *d_x = ToDevice(x), *d_w = ToDevice(w), *d_rows = ToDevice(std::vector<float>(N * d)),
        *d_out = ToDevice(std::vector<float>(T * d));
  ASSERT_TRUE(cuda::ExpertHistogram(d_idx, T * k, E, d_counts, nullptr).ok());
  ASSERT_TRUE(cuda::GatherRows<float>(d_x, d_token, N, d, d_rows, nullptr).ok());
  ASSERT_TRUE((cuda::CombineRows<float, float>(d_rows, d_pos, d_w, k, T, d, d_out, nullptr).ok()));
  EXPECT_EQ(ToHost(d_counts, E), routed);
  EXPECT_EQ(ToHost(d_rows, N * d), rows);
  const auto got = ToHost(d_out, T * d);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], out[i], 1e-5);
  for (void* p : {(void*)d_idx, (void*)d_counts, (void*)d_token, (void*)d_pos, (void*)d_x, (void*)d_w, (void*)d_rows,
                  (void*)d_out})
    cudaFree(p);
}

}  // namespace
}  // namespace dynamoe::kernels
