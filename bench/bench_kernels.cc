// Micro-benchmarks of the CPU kernels (kernels/*_cpu.cc, the twins of the
// CUDA kernels), one section per source file, each kernel against the plain
// ATen ops that would do its job (bench/kernel_bench.h), side by side in one
// run; the outputs are checked to agree before timing. fp32. The row kernels
// run over ATen's intra-op threads in chunks, as scheduler/cpu_ops.cc runs
// them; FusedRouter, ComputeRouting and InvertPositions are serial.
//
//   bench_kernels [--rounds 9]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include "absl/strings/str_format.h"
#include "bench/kernel_bench.h"
#include "common/status.h"
#include "kernels/kernels.h"

namespace {

namespace k = dynamoe::kernels;
namespace ref = dynamoe::bench::ref;
using at::Tensor;
using dynamoe::ThrowIfError;
using dynamoe::bench::CompareLine;
using dynamoe::bench::MakeRouterBuffers;
using dynamoe::bench::Require;
using dynamoe::bench::RouterBuffers;
using dynamoe::bench::Seconds;
using dynamoe::bench::Work;

int g_rounds = 9;

template <typename T>
T* P(const Tensor& t) {
  return t.data_ptr<T>();
}

// The seconds of one call of f, repeated so that a sample lasts >= 2 ms
// (the count is fixed after one timed call, so every sample does the same).
std::function<double()> Timed(std::function<void()> f) {
  f();
  const int reps = std::max(1, static_cast<int>(2e-3 / std::max(Seconds(f), 1e-9)));
  return [f, reps] { return Seconds([&] { for (int i = 0; i < reps; ++i) f(); }) / reps; };
}

// [0, n) over the intra-op threads, chunks of about 32k elements (as
// scheduler/tensor_util.h's ParallelRows).
template <typename F>
void Parallel(int64_t n, int64_t row_cost, const F& fn) {
  at::parallel_for(0, n, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_cost)), fn);
}

void Compare(const char* name, const std::string& shape, Work w, std::function<void()> kernel, const char* ref_name,
             std::function<void()> reference) {
  CompareLine(name, shape, w, Timed(std::move(kernel)), ref_name, Timed(std::move(reference)), g_rounds);
}

bool Close(const Tensor& a, const Tensor& b, double rtol, double atol) { return at::allclose(a, b, rtol, atol); }

// router_cpu.cc: the fused router (softmax, top-k, renormalised weights,
// dropless positions, counts, score sums) vs the same outputs from ATen.
void Router(int64_t T, int64_t E, int top_k) {
  const std::string shape = absl::StrFormat("T %d E %d top-%d", T, E, top_k);
  const Tensor logits = at::randn({T, E});
  const RouterBuffers b = MakeRouterBuffers(T, E, top_k, at::TensorOptions());
  auto kernel = [&] { ThrowIfError(k::FusedRouter(P<float>(logits), nullptr, b.spec, b.out)); };
  ref::Routed r;
  auto reference = [&] { r = ref::Router(logits, top_k); };
  kernel(), reference();
  ref::RequireRouterMatches(b.expert_idx, b.weight, b.position, b.kept_counts, b.score_sum, r);
  const double bytes = 2.0 * T * E * 4 + T * top_k * (8.0 + 4 + 8);  // logits in, scores, idx, weight, position out
  Compare("router", shape, {bytes, double(T)}, kernel, "softmax+topk+sort+bincount", reference);
}

// routing_cpu.cc: top-k, dropless ComputeRouting, InvertPositions.
void Routing(int64_t T, int64_t E, int top_k) {
  const std::string shape = absl::StrFormat("T %d E %d top-%d", T, E, top_k);
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  const Tensor key = at::rand({T, E}), idx = at::empty({T, top_k}, i64);
  Tensor r;
  auto topk = [&] {
    Parallel(T, E, [&](int64_t b, int64_t e) {
      ThrowIfError(k::TopK<float>(P<float>(key), T, E, top_k, P<int64_t>(idx), b, e));
    });
  };
  auto topk_ref = [&] { r = std::get<1>(at::topk(key, top_k, -1)); };
  topk(), topk_ref();
  Require(at::equal(idx, r), "top-k");
  Compare("top_k", shape, {T * E * 4.0 + T * top_k * 8.0, double(T)}, topk, "topk", topk_ref);

  const Tensor pos = at::empty({T, top_k}, i64), kept = at::empty({E}, i64), routed = at::empty({E}, i64);
  int64_t dropped = 0;
  auto route = [&] {
    ThrowIfError(k::ComputeRouting(P<int64_t>(idx), T, top_k, E, k::RoutingOptions{}, P<int64_t>(pos),
                                   P<int64_t>(kept), P<int64_t>(routed), &dropped));
  };
  Tensor r_counts;
  auto route_ref = [&] {
    r = ref::SortPositions(idx);
    r_counts = at::bincount(idx.flatten(), {}, E);
  };
  route(), route_ref();
  Require(dropped == 0 && at::equal(pos, r) && at::equal(kept, r_counts) && at::equal(routed, r_counts),
          "compute_routing");
  Compare("compute_routing", shape, {T * top_k * 16.0, double(T)}, route, "stable sort+bincount", route_ref);

  const Tensor assignment = at::empty({T * top_k}, i64);
  auto invert = [&] {
    ThrowIfError(k::InvertPositions(P<int64_t>(pos), T * top_k, T * top_k, P<int64_t>(assignment)));
  };
  auto invert_ref = [&] { r = ref::Invert(pos); };
  invert(), invert_ref();
  Require(at::equal(assignment, r), "invert_positions");
  Compare("invert_positions", shape, {T * top_k * 16.0, double(T * top_k)}, invert, "scatter", invert_ref);
}

// permute_cpu.cc: dispatch gather, weighted combine and its two backward
// kernels, on a dropless routing of uniform random choices.
void Permute(int64_t T, int64_t d, int64_t E, int top_k) {
  const std::string shape = absl::StrFormat("T %d d %d E %d top-%d", T, d, E, top_k);
  const int64_t R = T * top_k;
  const Tensor idx = std::get<1>(at::topk(at::rand({T, E}), top_k, -1));
  const Tensor pos = ref::SortPositions(idx), assignment = ref::Invert(pos);
  const Tensor token = at::div(assignment, top_k, "floor");
  const Tensor x = at::randn({T, d}), weight = at::rand({T, top_k}), grad_out = at::randn({T, d});
  const Tensor rows = at::empty({R, d}), out = at::empty({T, d}), grad_rows = at::empty({R, d}),
               grad_weight = at::empty({T, top_k});
  Tensor r;

  auto gather = [&] {
    Parallel(R, d, [&](int64_t b, int64_t e) { k::GatherRows<float>(P<float>(x), P<int64_t>(token), d, P<float>(rows), b, e); });
  };
  // Into a buffer allocated once, as the kernel's: the copy alone is compared.
  r = at::empty_like(rows);
  auto gather_ref = [&] { at::index_select_out(r, x, 0, token); };
  gather(), gather_ref();
  Require(at::equal(rows, r), "gather_rows");
  Compare("gather_rows", shape, {2.0 * R * d * 4, double(R)}, gather, "index_select", gather_ref);

  auto combine = [&] {
    Parallel(T, d * top_k, [&](int64_t b, int64_t e) {
      k::CombineRows<float, float>(P<float>(rows), P<int64_t>(pos), P<float>(weight), top_k, d, P<float>(out), b, e);
    });
  };
  auto combine_ref = [&] { r = ref::Combine(rows, pos, weight); };
  combine(), combine_ref();
  Require(Close(out, r, 1e-5, 1e-5), "combine_rows");
  Compare("combine_rows", shape, {(R + T) * d * 4.0, double(T)}, combine, "index_select*w, sum", combine_ref);

  auto scatter = [&] {
    Parallel(R, d, [&](int64_t b, int64_t e) {
      k::ScatterWeightedRows<float, float>(P<float>(grad_out), P<int64_t>(assignment), P<float>(weight), top_k, d,
                                           P<float>(grad_rows), b, e);
    });
  };
  auto scatter_ref = [&] { r = ref::ScatterWeighted(grad_out, assignment, weight); };
  scatter(), scatter_ref();
  Require(Close(grad_rows, r, 1e-6, 1e-7), "scatter_weighted_rows");
  Compare("scatter_weighted_rows", shape, {2.0 * R * d * 4, double(R)}, scatter, "index_select*w", scatter_ref);

  auto wgrad = [&] {
    Parallel(T, d * top_k, [&](int64_t b, int64_t e) {
      k::CombineWeightGrad<float, float>(P<float>(grad_out), P<float>(rows), P<int64_t>(pos), top_k, d,
                                         P<float>(grad_weight), b, e);
    });
  };
  auto wgrad_ref = [&] { r = ref::CombineWeightGrad(grad_out, rows, pos); };
  wgrad(), wgrad_ref();
  Require(Close(grad_weight, r, 1e-4, 1e-3), "combine_weight_grad");
  Compare("combine_weight_grad", shape, {(R + T) * d * 4.0, double(T)}, wgrad, "index_select*g, sum", wgrad_ref);
}

// activation_cpu.cc: SwiGLU (silu(h) g) forward and backward over the
// expert FFN's hidden activations, [rows, hidden].
void Activation(int64_t rows, int64_t hidden) {
  const std::string shape = absl::StrFormat("rows %d hidden %d", rows, hidden);
  const int64_t n = rows * hidden;
  const Tensor h = at::randn({rows, hidden}), g = at::randn({rows, hidden}), grad_a = at::randn({rows, hidden});
  const Tensor a = at::empty_like(h), grad_h = at::empty_like(h), grad_g = at::empty_like(h), a_out = at::empty_like(h);
  Tensor r;
  auto fwd = [&] {
    Parallel(n, 1, [&](int64_t b, int64_t e) {
      k::ActivationForward<float>(P<float>(h), P<float>(g), k::Activation::kSilu, P<float>(a), b, e);
    });
  };
  auto fwd_ref = [&] { r = ref::SiluGated(h, g); };
  fwd(), fwd_ref();
  Require(Close(a, r, 1e-5, 1e-6), "activation_forward");
  Compare("activation_forward", shape, {3.0 * n * 4, double(rows)}, fwd, "silu(h)*g", fwd_ref);

  std::tuple<Tensor, Tensor, Tensor> rb;
  auto bwd = [&] {
    Parallel(n, 1, [&](int64_t b, int64_t e) {
      k::ActivationBackward<float>(P<float>(grad_a), P<float>(h), P<float>(g), k::Activation::kSilu, P<float>(grad_h),
                                   P<float>(grad_g), P<float>(a_out), b, e);
    });
  };
  auto bwd_ref = [&] { rb = ref::SiluGatedBackward(grad_a, h, g); };
  bwd(), bwd_ref();
  Require(Close(grad_h, std::get<0>(rb), 1e-4, 1e-5) && Close(grad_g, std::get<1>(rb), 1e-5, 1e-6) &&
              Close(a_out, std::get<2>(rb), 1e-5, 1e-6),
          "activation_backward");
  Compare("activation_backward", shape, {6.0 * n * 4, double(rows)}, bwd, "silu_backward, 3 muls", bwd_ref);
}

}  // namespace

int main(int argc, char** argv) {
  if (!dynamoe::bench::ParseRounds(argc, argv, "bench_kernels", g_rounds)) return 2;
  at::manual_seed(0);
  std::printf("bench_kernels: CPU twins vs ATen, fp32, %d intra-op threads, median of %d interleaved rounds; "
              "ref/kernel > 1: the kernel is faster\n",
              at::get_num_threads(), g_rounds);
  // Mixtral (8 experts, top-2), DeepSeek/OLMoE-like (64, top-8), a wide router.
  std::printf("router_cpu.cc\n");
  Router(4096, 8, 2), Router(4096, 64, 8), Router(16384, 128, 8);
  std::printf("routing_cpu.cc\n");
  Routing(4096, 8, 2), Routing(4096, 64, 8), Routing(16384, 128, 8);
  std::printf("permute_cpu.cc\n");
  Permute(4096, 1024, 8, 2), Permute(2048, 2048, 64, 8), Permute(8192, 4096, 8, 2);
  std::printf("activation_cpu.cc\n");
  Activation(8192, 1024), Activation(8192, 2816), Activation(8192, 4096);
  return 0;
}
