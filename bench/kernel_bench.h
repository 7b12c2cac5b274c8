// Shared by the kernel micro-benchmarks (bench_kernels on the CPU,
// bench_cuda_kernels on the GPU): the plain ATen reference of each kernel,
// the output check, and the side-by-side line.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <tuple>

#include "bench/bench_util.h"
#include "kernels/kernels.h"

namespace dynamoe::bench {

// A ratio means nothing if the two sides compute different things.
inline void Require(bool ok, const std::string& what) {
  if (ok) return;
  std::fprintf(stderr, "kernel bench: %s: the kernel and the ATen reference disagree\n", what.c_str());
  std::exit(1);
}

// What one call must touch, for the throughput figures: bytes read plus
// written (the kernel's minimum, indices left out) and rows produced.
struct Work {
  double bytes = 0;
  double rows = 0;
};

// Runs kernel and reference (each returns the seconds of one call) in
// interleaved rounds and prints their medians, the kernel's GB/s and rows/s,
// and reference / kernel (above 1: the kernel is faster).
// The programs' one flag, [--rounds N]; false (after a usage line) on anything else.
inline bool ParseRounds(int argc, char** argv, const char* program, int& rounds) {
  if (argc == 3 && std::string(argv[1]) == "--rounds") {
    rounds = std::max(1, std::atoi(argv[2]));
    return true;
  }
  if (argc == 1) return true;
  std::fprintf(stderr, "usage: %s [--rounds N]\n", program);
  return false;
}

inline void CompareLine(const std::string& name, const std::string& shape, Work work,
                        const std::function<double()>& kernel, const std::string& ref_name,
                        const std::function<double()>& ref, int rounds) {
  const std::vector<double> t = InterleavedMedians({kernel, ref}, rounds);
  std::printf("  %-22s %-24s kernel %9.1f us %7.2f GB/s %9.2f Mrows/s | %-30s %9.1f us | ref/kernel %5.2f\n",
              name.c_str(), shape.c_str(), t[0] * 1e6, work.bytes / t[0] / 1e9, work.rows / t[0] / 1e6,
              ref_name.c_str(), t[1] * 1e6, t[1] / t[0]);
  std::fflush(stdout);
}

// The fused router's output tensors (on `on`'s device) and the kernels' view
// of them, for T tokens, E experts and top_k: the CPU and the CUDA router
// take the same spec and outputs.
struct RouterBuffers {
  at::Tensor scores, expert_idx, weight, position, kept_counts, routed_counts, score_sum, dropped;
  kernels::RouterSpec spec;
  kernels::RouterOutputs out;
};
inline RouterBuffers MakeRouterBuffers(int64_t T, int64_t E, int top_k, const at::TensorOptions& on) {
  const at::TensorOptions f32 = on.dtype(at::kFloat), i64 = on.dtype(at::kLong);
  RouterBuffers b;
  b.scores = at::empty({T, E}, f32), b.expert_idx = at::empty({T, top_k}, i64), b.weight = at::empty({T, top_k}, f32);
  b.position = at::empty({T, top_k}, i64), b.kept_counts = at::empty({E}, i64), b.routed_counts = at::empty({E}, i64);
  b.score_sum = at::empty({E}, f32), b.dropped = at::empty({1}, i64);
  b.spec.num_tokens = T, b.spec.num_experts = E, b.spec.top_k = top_k;
  b.out.scores = b.scores.data_ptr<float>(), b.out.expert_idx = b.expert_idx.data_ptr<int64_t>();
  b.out.weight = b.weight.data_ptr<float>(), b.out.position = b.position.data_ptr<int64_t>();
  b.out.kept_counts = b.kept_counts.data_ptr<int64_t>(), b.out.routed_counts = b.routed_counts.data_ptr<int64_t>();
  b.out.score_sum = b.score_sum.data_ptr<float>(), b.out.dropped = b.dropped.data_ptr<int64_t>();
  return b;
}

// The references: what a plain ATen implementation of each kernel calls.
namespace ref {

// Dropless expert-sorted positions: rows ordered by expert, then by token (a
// stable sort of the token-major choices), as kernels::ComputeRouting orders them.
inline at::Tensor SortPositions(const at::Tensor& expert_idx) {
  const at::Tensor flat = expert_idx.flatten();
  const at::Tensor order = std::get<1>(at::sort(flat, /*stable=*/true, 0, /*descending=*/false));
  return at::empty_like(flat).scatter_(0, order, at::arange(flat.numel(), flat.options())).view_as(expert_idx);
}

// assignment[position[a]] = a.
inline at::Tensor Invert(const at::Tensor& position) {
  const at::Tensor flat = position.flatten();
  return at::empty_like(flat).scatter_(0, flat, at::arange(flat.numel(), flat.options()));
}

// The fused router's outputs (dropless, renormalised softmax top-k).
struct Routed {
  at::Tensor scores, expert_idx, weight, position, counts, score_sum;
};
inline Routed Router(const at::Tensor& logits, int64_t top_k) {
  Routed r;
  r.scores = at::softmax(logits, -1);
  auto top = at::topk(r.scores, top_k, -1);
  r.weight = std::get<0>(top) / std::get<0>(top).sum({-1}, true);
  r.expert_idx = std::get<1>(top);
  r.position = SortPositions(r.expert_idx);
  r.counts = at::bincount(r.expert_idx.flatten(), {}, logits.size(1));
  r.score_sum = r.scores.sum({0});
  return r;
}

// The fused router's outputs against Router's. Two scores within an ulp may
// order differently in the two softmaxes, so a few rows' top-k may differ
// (then only the rate is checked).
inline void RequireRouterMatches(const at::Tensor& expert_idx, const at::Tensor& weight, const at::Tensor& position,
                                 const at::Tensor& kept_counts, const at::Tensor& score_sum, const Routed& r) {
  const int64_t rows = expert_idx.size(0);
  const int64_t differ = (expert_idx != r.expert_idx).any(1).sum().item<int64_t>();
  Require(differ <= rows / 1000, "router: top-k differs on " + std::to_string(differ) + " of " +
                                     std::to_string(rows) + " rows");
  if (differ > 0) return;
  Require(at::equal(position, r.position) && at::equal(kept_counts, r.counts) &&
              at::allclose(weight, r.weight, 1e-5, 1e-6) && at::allclose(score_sum, r.score_sum, 1e-3, 1e-3),
          "router outputs");
}

// out[t] = sum_j weight[t, j] rows[position[t, j]].
inline at::Tensor Combine(const at::Tensor& rows, const at::Tensor& position, const at::Tensor& weight) {
  const at::Tensor picked = rows.index_select(0, position.flatten()).view({position.size(0), position.size(1), -1});
  return (picked * weight.unsqueeze(-1).to(rows.scalar_type())).sum({1});
}

// grad_rows[row] = weight[a] grad_out[a / top_k], a = assignment[row].
inline at::Tensor ScatterWeighted(const at::Tensor& grad_out, const at::Tensor& assignment, const at::Tensor& weight) {
  const at::Tensor token = at::div(assignment, weight.size(1), "floor");
  return grad_out.index_select(0, token) * weight.flatten().index_select(0, assignment).unsqueeze(1).to(grad_out.scalar_type());
}

// grad_weight[t, j] = <grad_out[t], rows[position[t, j]]>.
inline at::Tensor CombineWeightGrad(const at::Tensor& grad_out, const at::Tensor& rows, const at::Tensor& position) {
  const at::Tensor picked = rows.index_select(0, position.flatten()).view({position.size(0), position.size(1), -1});
  return (picked * grad_out.unsqueeze(1)).sum({-1}, false, at::kFloat);
}

// SwiGLU as scheduler/cpu_ops.cc computes it with ATen: a = silu(h) g, and
// its backward (grad_h, grad_g, a).
inline at::Tensor SiluGated(const at::Tensor& h, const at::Tensor& g) { return at::silu(h).mul_(g); }
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> SiluGatedBackward(const at::Tensor& grad_a, const at::Tensor& h,
                                                                        const at::Tensor& g) {
  const at::Tensor act = at::silu(h);
  return {at::silu_backward(grad_a * g, h), grad_a * act, act * g};
}

}  // namespace ref
}  // namespace dynamoe::bench
