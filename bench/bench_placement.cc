// bench_placement: decision time of each placement policy (pure C++, no
// torch). For experts in {8, 64, 256} and world sizes in {8, 64, 256}, feeds
// a policy a rotating set of skewed count matrices (Zipf-like expert
// popularity, 4096 tokens x top-2 per rank, a different hot set each matrix)
// and reports the mean time of Policy::Step, which re-plans every step
// (interval 1). Targets: fastermoe and adaptive under 50 us, eplb under 1 ms,
// at 256 experts x 64 ranks. Experts fewer than ranks is not a valid layout
// (every rank owns at least one expert) and prints n/a.
//
//   ./build/default/bench/bench_placement [--min-seconds 0.2]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "placement/policy.h"

namespace {

using namespace dynamoe::placement;

std::vector<CountMatrix> Workload(int64_t P, int64_t E, int n) {
  std::mt19937 rng(42);
  std::vector<CountMatrix> out;
  for (int i = 0; i < n; ++i) {
    std::vector<double> pop(E);
    std::vector<int64_t> perm(E);
    for (int64_t e = 0; e < E; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), rng);
    double total = 0;
    for (int64_t e = 0; e < E; ++e) total += pop[perm[e]] = 1.0 / std::pow(e + 1.0, 1.2);
    std::vector<int64_t> c(P * E);
    std::uniform_real_distribution<double> jitter(0.8, 1.2);
    for (int64_t s = 0; s < P; ++s)
      for (int64_t e = 0; e < E; ++e) c[s * E + e] = static_cast<int64_t>(8192.0 * pop[e] / total * jitter(rng));
    out.push_back(CountMatrix::Make(P, E, std::move(c)).value());
  }
  return out;
}

double MicrosPerDecision(const std::string& name, int64_t P, int64_t E, double min_seconds) {
  ClusterSpec cluster;
  cluster.world_size = P;
  cluster.ranks_per_node = 8;
  const LayerSpec layer{4096, 14336, true, false, 2};  // Mixtral-sized experts, bf16
  auto policy = MakePolicy(name, cluster, layer, PolicyOptions{}).value();
  const std::vector<CountMatrix> work = Workload(P, E, 16);
  using Clock = std::chrono::steady_clock;
  int64_t iters = 0;
  volatile uint64_t sink = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  do {
    for (const CountMatrix& m : work) sink = sink + policy->Step(m).value().TotalCopies();
    iters += static_cast<int64_t>(work.size());
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < min_seconds);
  return elapsed / static_cast<double>(iters) * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  double min_seconds = 0.2;
  for (int i = 1; i + 1 < argc; i += 2)
    if (std::strcmp(argv[i], "--min-seconds") == 0) min_seconds = std::stod(argv[i + 1]);
  std::printf("bench_placement: mean microseconds per decision (Policy::Step, re-plan every step), skewed counts, "
              "d_model 4096, d_hidden 14336, gated, bf16, 8 ranks per node\n\n");
  std::printf("| policy | experts | 8 ranks | 64 ranks | 256 ranks |\n|---|---|---|---|---|\n");
  bool ok = true;
  double at_target[4] = {0, 0, 0, 0};
  const char* names[] = {"none", "fastermoe", "adaptive", "eplb"};
  for (int p = 0; p < 4; ++p)
    for (int64_t E : {8, 64, 256}) {
      std::printf("| %s | %lld |", names[p], static_cast<long long>(E));
      for (int64_t P : {8, 64, 256}) {
        if (E < P) {
          std::printf(" n/a |");
          continue;
        }
        const double us = MicrosPerDecision(names[p], P, E, min_seconds);
        if (E == 256 && P == 64) at_target[p] = us;
        std::printf(" %.1f |", us);
        std::fflush(stdout);
      }
      std::printf("\n");
    }
  std::printf("\nAt 256 experts x 64 ranks: fastermoe %.1f us, adaptive %.1f us (target < 50 us); eplb %.1f us "
              "(target < 1000 us)\n",
              at_target[1], at_target[2], at_target[3]);
  ok = at_target[1] < 50 && at_target[2] < 50 && at_target[3] < 1000;
  std::printf("targets: %s\n", ok ? "met" : "MISSED");
  return 0;
}
