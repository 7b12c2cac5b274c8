// The replay scale check (issue 9): 10,000 steps x 32 layers x 64 experts,
// recorded on 4 ranks, replayed for a 64-rank h100-nvlink-ib cluster under all
// four policies. Prints the synth and replay wall times and the target (60 s
// on 2 cores).
//
//   bench_replay [--steps 10000] [--layers 32] [--tokens 16]
#include <chrono>
#include <cstring>
#include <iostream>

#include "absl/strings/str_format.h"
#include "placement/replay.h"
#include "placement/replay_inputs.h"

int main(int argc, char** argv) {
  using namespace dynamoe::placement;
  SynthOptions s;
  s.steps = 10000, s.layers = 32, s.experts = 64, s.world = 4, s.tokens = 16, s.drift_every = 500;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--steps")) s.steps = std::atol(argv[i + 1]);
    if (!std::strcmp(argv[i], "--layers")) s.layers = std::atol(argv[i + 1]);
    if (!std::strcmp(argv[i], "--tokens")) s.tokens = std::atol(argv[i + 1]);
  }
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  auto trace = Synthesize(s);
  if (!trace.ok()) return std::cerr << trace.status() << "\n", 1;
  const auto t1 = clock::now();
  ReplayOptions o;
  o.world_size = 64;
  o.cluster = *ClusterPreset("h100-nvlink-ib");
  auto report = Replay(*trace, o);
  if (!report.ok()) return std::cerr << report.status() << "\n", 1;
  const auto t2 = clock::now();
  const double synth = std::chrono::duration<double>(t1 - t0).count();
  const double replay = std::chrono::duration<double>(t2 - t1).count();
  std::cout << absl::StrFormat("synth: %d steps x %d layers x %d experts on %d ranks in %.1f s\n", s.steps, s.layers,
                               s.experts, s.world, synth);
  std::cout << absl::StrFormat("replay: %d layer-steps x 4 policies for 64 ranks in %.1f s (target < 60 s: %s)\n",
                               static_cast<int64_t>(trace->steps.size()), replay, replay < 60 ? "met" : "missed");
  for (const PolicyReport& p : report->policies)
    std::cout << absl::StrFormat("  %-10s mean %.4f ms  speedup %.3fx  copies/step %.2f\n", p.policy,
                                 p.mean_seconds * 1e3, p.speedup_vs_none, p.copies_per_step);
  return 0;
}
