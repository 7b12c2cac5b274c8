// Micro-benchmarks of the CUDA kernels (kernels/cuda/*.cu), one section per
// source file, each launcher against the ATen CUDA ops that would do its job
// (bench/kernel_bench.h), side by side in one run; the outputs are checked to
// agree before timing. CUDA events time a batch of launches on the current
// stream. Rows and activations in bf16, router logits and weights in fp32.
// Where no GPU is usable it prints "skipped: no GPU" and exits 0.
//
//   bench_cuda_kernels [--rounds 15]
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include "absl/strings/str_format.h"
#include "bench/kernel_bench.h"
#include "common/status.h"
#include "kernels/cuda/kernels_cuda.h"

namespace {

namespace k = dynamoe::kernels;
namespace kc = dynamoe::kernels::cuda;
namespace ref = dynamoe::bench::ref;
using at::Tensor;
using dynamoe::ThrowIfError;
using dynamoe::bench::CompareLine;
using dynamoe::bench::MakeRouterBuffers;
using dynamoe::bench::Require;
using dynamoe::bench::RouterBuffers;
using dynamoe::bench::Work;

int g_rounds = 15;

cudaStream_t Stream() { return at::cuda::getCurrentCUDAStream().stream(); }

template <typename T>
T* P(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

struct Events {
  cudaEvent_t start = nullptr, stop = nullptr;
  Events() { cudaEventCreate(&start), cudaEventCreate(&stop); }
  ~Events() { cudaEventDestroy(start), cudaEventDestroy(stop); }
};

// The device seconds of one call of f, from events around enough calls to
// last >= 1 ms (the count is fixed after one timed call).
std::function<double()> Timed(std::function<void()> f) {
  auto ev = std::make_shared<Events>();
  auto run = [f, ev](int reps) {
    cudaEventRecord(ev->start, Stream());
    for (int i = 0; i < reps; ++i) f();
    cudaEventRecord(ev->stop, Stream());
    cudaEventSynchronize(ev->stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, ev->start, ev->stop);
    return ms * 1e-3 / reps;
  };
  run(1);
  const int reps = std::max(1, static_cast<int>(1e-3 / std::max(run(1), 1e-9)));
  return [run, reps] { return run(reps); };
}

void Compare(const char* name, const std::string& shape, Work w, std::function<void()> kernel, const char* ref_name,
             std::function<void()> reference) {
  CompareLine(name, shape, w, Timed(std::move(kernel)), ref_name, Timed(std::move(reference)), g_rounds);
}

at::TensorOptions On(at::ScalarType t) { return at::TensorOptions().device(at::kCUDA).dtype(t); }

// A bf16 (or fp32) kernel output against the fp32 reference.
bool Near(const Tensor& got, const Tensor& want, double rtol, double atol) {
  return at::allclose(got.to(at::kFloat), want, rtol, atol);
}

// router.cu: the fused router vs the same outputs from ATen.
void Router(int64_t T, int64_t E, int top_k) {
  const std::string shape = absl::StrFormat("T %d E %d top-%d", T, E, top_k);
  const Tensor logits = at::randn({T, E}, On(at::kFloat));
  const RouterBuffers b = MakeRouterBuffers(T, E, top_k, On(at::kFloat));
  const size_t ws_bytes = kc::RouterWorkspaceBytes(b.spec);
  const Tensor ws = at::empty({static_cast<int64_t>(std::max<size_t>(1, ws_bytes))}, On(at::kByte));
  auto kernel = [&] {
    ThrowIfError(kc::FusedRouter(P<float>(logits), nullptr, b.spec, b.out, ws.data_ptr(), ws_bytes, Stream()));
  };
  ref::Routed r;
  auto reference = [&] { r = ref::Router(logits, top_k); };
  kernel(), reference();
  ref::RequireRouterMatches(b.expert_idx, b.weight, b.position, b.kept_counts, b.score_sum, r);
  const double bytes = 2.0 * T * E * 4 + T * top_k * (8.0 + 4 + 8);  // logits in, scores, idx, weight, position out
  Compare("router", shape, {bytes, double(T)}, kernel, "softmax+topk+sort+bincount", reference);
}

// routing.cu and permute.cu's InvertPositions: the expert histogram and
// the inverse of the positions.
void Routing(int64_t T, int64_t E, int top_k) {
  const std::string shape = absl::StrFormat("T %d E %d top-%d", T, E, top_k);
  const int64_t n = T * top_k;
  const Tensor idx = std::get<1>(at::topk(at::rand({T, E}, On(at::kFloat)), top_k, -1));
  const Tensor counts = at::empty({E}, On(at::kLong));
  Tensor r;
  auto hist = [&] { ThrowIfError(kc::ExpertHistogram(P<int64_t>(idx), n, E, P<int64_t>(counts), Stream())); };
  auto hist_ref = [&] { r = at::bincount(idx.flatten(), {}, E); };
  hist(), hist_ref();
  Require(at::equal(counts, r), "expert_histogram");
  Compare("expert_histogram", shape, {n * 8.0, double(T)}, hist, "bincount", hist_ref);

  const Tensor pos = ref::SortPositions(idx), assignment = at::empty({n}, On(at::kLong));
  auto invert = [&] { ThrowIfError(kc::InvertPositions(P<int64_t>(pos), n, P<int64_t>(assignment), Stream())); };
  auto invert_ref = [&] { r = ref::Invert(pos); };
  invert(), invert_ref();
  Require(at::equal(assignment, r), "invert_positions");
  Compare("invert_positions", shape, {n * 16.0, double(n)}, invert, "scatter", invert_ref);
}

// permute.cu: dispatch gather, weighted combine and its two backward
// kernels, bf16 rows and fp32 weights, dropless uniform random routing.
void Permute(int64_t T, int64_t d, int64_t E, int top_k) {
  const std::string shape = absl::StrFormat("T %d d %d E %d top-%d", T, d, E, top_k);
  const int64_t R = T * top_k;
  const auto bf = On(at::kBFloat16), f32 = On(at::kFloat);
  const Tensor idx = std::get<1>(at::topk(at::rand({T, E}, f32), top_k, -1));
  const Tensor pos = ref::SortPositions(idx), assignment = ref::Invert(pos);
  const Tensor token = at::div(assignment, top_k, "floor");
  const Tensor x = at::randn({T, d}, bf), weight = at::rand({T, top_k}, f32), grad_out = at::randn({T, d}, bf);
  const Tensor rows = at::empty({R, d}, bf), out = at::empty({T, d}, bf), grad_rows = at::empty({R, d}, bf),
               grad_weight = at::empty({T, top_k}, f32);
  Tensor r;
  // The kernels compute in fp32 and round once: checked against the
  // reference in fp32 on the same inputs (ATen in bf16 rounds every step).
  const Tensor rows_f = x.index_select(0, token).to(at::kFloat), grad_out_f = grad_out.to(at::kFloat);

  auto gather = [&] {
    ThrowIfError(kc::GatherRows<k::bf16>(P<k::bf16>(x), P<int64_t>(token), R, d, P<k::bf16>(rows), Stream()));
  };
  r = at::empty_like(rows);  // allocated once, as the kernel's output
  auto gather_ref = [&] { at::index_select_out(r, x, 0, token); };
  gather(), gather_ref();
  Require(at::equal(rows, r), "gather_rows");
  Compare("gather_rows", shape, {2.0 * R * d * 2, double(R)}, gather, "index_select", gather_ref);

  auto combine = [&] {
    ThrowIfError(kc::CombineRows<k::bf16, float>(P<k::bf16>(rows), P<int64_t>(pos), P<float>(weight), top_k, T, d,
                                                  P<k::bf16>(out), Stream()));
  };
  auto combine_ref = [&] { r = ref::Combine(rows, pos, weight); };
  combine(), combine_ref();
  Require(Near(out, ref::Combine(rows_f, pos, weight), 1e-2, 1e-2), "combine_rows");
  Compare("combine_rows", shape, {(R + T) * d * 2.0, double(T)}, combine, "index_select*w, sum", combine_ref);

  auto scatter = [&] {
    ThrowIfError(kc::ScatterWeightedRows<k::bf16, float>(P<k::bf16>(grad_out), P<int64_t>(assignment),
                                                         P<float>(weight), top_k, R, d, P<k::bf16>(grad_rows),
                                                         Stream()));
  };
  auto scatter_ref = [&] { r = ref::ScatterWeighted(grad_out, assignment, weight); };
  scatter(), scatter_ref();
  Require(Near(grad_rows, ref::ScatterWeighted(grad_out_f, assignment, weight), 1e-2, 1e-3), "scatter_weighted_rows");
  Compare("scatter_weighted_rows", shape, {2.0 * R * d * 2, double(R)}, scatter, "index_select*w", scatter_ref);

  auto wgrad = [&] {
    ThrowIfError(kc::CombineWeightGrad<k::bf16, float>(P<k::bf16>(grad_out), P<k::bf16>(rows), P<int64_t>(pos), top_k,
                                                       T, d, P<float>(grad_weight), Stream()));
  };
  auto wgrad_ref = [&] { r = ref::CombineWeightGrad(grad_out, rows, pos); };
  wgrad(), wgrad_ref();
  Require(Near(grad_weight, ref::CombineWeightGrad(grad_out_f, rows_f, pos), 1e-3, 1e-4 * std::sqrt(double(d))),
          "combine_weight_grad");
  Compare("combine_weight_grad", shape, {(R + T) * d * 2.0, double(T)}, wgrad, "index_select*g, sum", wgrad_ref);
}

// activation.cu: SwiGLU (silu(h) g) forward and backward, bf16.
void Activation(int64_t rows, int64_t hidden) {
  const std::string shape = absl::StrFormat("rows %d hidden %d", rows, hidden);
  const int64_t n = rows * hidden;
  const auto bf = On(at::kBFloat16);
  const Tensor h = at::randn({rows, hidden}, bf), g = at::randn({rows, hidden}, bf),
               grad_a = at::randn({rows, hidden}, bf);
  const Tensor a = at::empty_like(h), grad_h = at::empty_like(h), grad_g = at::empty_like(h), a_out = at::empty_like(h);
  const Tensor h_f = h.to(at::kFloat), g_f = g.to(at::kFloat), grad_a_f = grad_a.to(at::kFloat);
  Tensor r;
  auto fwd = [&] {
    ThrowIfError(kc::ActivationForward<k::bf16>(P<k::bf16>(h), P<k::bf16>(g), k::Activation::kSilu, n, P<k::bf16>(a),
                                                Stream()));
  };
  auto fwd_ref = [&] { r = ref::SiluGated(h, g); };
  fwd(), fwd_ref();
  Require(Near(a, ref::SiluGated(h_f, g_f), 1e-2, 1e-3), "activation_forward");
  Compare("activation_forward", shape, {3.0 * n * 2, double(rows)}, fwd, "silu(h)*g", fwd_ref);

  std::tuple<Tensor, Tensor, Tensor> rb;
  auto bwd = [&] {
    ThrowIfError(kc::ActivationBackward<k::bf16>(P<k::bf16>(grad_a), P<k::bf16>(h), P<k::bf16>(g), k::Activation::kSilu,
                                                 n, P<k::bf16>(grad_h), P<k::bf16>(grad_g), P<k::bf16>(a_out),
                                                 Stream()));
  };
  auto bwd_ref = [&] { rb = ref::SiluGatedBackward(grad_a, h, g); };
  bwd(), bwd_ref();
  const auto want = ref::SiluGatedBackward(grad_a_f, h_f, g_f);
  Require(Near(grad_h, std::get<0>(want), 1e-2, 1e-3) && Near(grad_g, std::get<1>(want), 1e-2, 1e-3) &&
              Near(a_out, std::get<2>(want), 1e-2, 1e-3),
          "activation_backward");
  Compare("activation_backward", shape, {6.0 * n * 2, double(rows)}, bwd, "silu_backward, 3 muls", bwd_ref);
}

}  // namespace

int main(int argc, char** argv) {
  if (!dynamoe::bench::ParseRounds(argc, argv, "bench_cuda_kernels", g_rounds)) return 2;
  if (!kc::DeviceAvailable() || !at::cuda::is_available()) {
    std::printf("bench_cuda_kernels: skipped: no GPU\n");
    return 0;
  }
  at::manual_seed(0);
  std::printf("bench_cuda_kernels: CUDA launchers vs ATen on %s, median of %d interleaved rounds (CUDA events); "
              "ref/kernel > 1: the kernel is faster\n",
              at::cuda::getCurrentDeviceProperties()->name, g_rounds);
  std::printf("router.cu\n");
  Router(16384, 8, 2), Router(16384, 64, 8), Router(65536, 128, 8);
  std::printf("routing.cu, permute.cu's InvertPositions\n");
  Routing(16384, 8, 2), Routing(16384, 64, 8), Routing(65536, 128, 8);
  std::printf("permute.cu\n");
  Permute(16384, 4096, 8, 2), Permute(8192, 2048, 64, 8), Permute(65536, 4096, 8, 2);
  std::printf("activation.cu\n");
  Activation(32768, 1408), Activation(32768, 2816), Activation(32768, 14336);
  return 0;
}
