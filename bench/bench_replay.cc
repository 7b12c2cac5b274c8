// The replay scale check (issue 9): 10,000 steps x 32 layers x 64 experts,
// recorded on 4 ranks (1024 tokens each, top-2, Zipf 1.2, hot set drifting
// every 100 steps, a burst every 250), replayed for a 64-rank h100-nvlink-ib
// cluster under all four policies and the force-balanced bound. Synthesizing
// 320,000 count matrices token by token would dominate the run, so `--pool`
// distinct steps are synthesized and the 10,000 steps cycle through them
// (every step is still replayed in full, policy state included). Prints the
// synth and replay wall times and the target (20 s on 2 cores, issue 23).
//
//   bench_replay [--steps 10000] [--layers 32] [--tokens 1024] [--pool 500] [--policy NAME]...
#include <chrono>
#include <cstring>
#include <iostream>
#include <thread>

#include "absl/strings/str_format.h"
#include "replay/replay.h"
#include "replay/replay_inputs.h"

int main(int argc, char** argv) {
  using namespace dynamoe::placement;
  SynthOptions s;
  s.layers = 32, s.experts = 64, s.world = 4, s.tokens = 1024, s.drift_every = 100, s.burst_every = 250;
  int64_t steps = 10000;
  std::vector<std::string> policies;
  s.steps = 500;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--steps")) steps = std::atol(argv[i + 1]);
    if (!std::strcmp(argv[i], "--layers")) s.layers = std::atol(argv[i + 1]);
    if (!std::strcmp(argv[i], "--tokens")) s.tokens = std::atol(argv[i + 1]);
    if (!std::strcmp(argv[i], "--pool")) s.steps = std::atol(argv[i + 1]);
    if (!std::strcmp(argv[i], "--policy")) policies.push_back(argv[i + 1]);  // repeatable; default all (none and
                                                                             // the bound are replayed anyway)
  }
  s.steps = std::min(s.steps, steps);
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  auto pool = Synthesize(s);
  if (!pool.ok()) return std::cerr << pool.status() << "\n", 1;
  Trace trace = *pool;
  trace.steps.clear();
  trace.steps.reserve(steps * s.layers);
  for (int64_t i = 0; i < steps; ++i)
    for (int64_t l = 0; l < s.layers; ++l) {
      TraceStep st = pool->steps[(i % s.steps) * s.layers + l];
      st.step = i;
      trace.steps.push_back(std::move(st));
    }
  const auto t1 = clock::now();
  ReplayOptions o;
  o.world_size = 64;
  o.cluster = *ClusterPreset("h100-nvlink-ib");
  if (!policies.empty()) o.policies = policies;
  auto report = Replay(trace, o);
  if (!report.ok()) return std::cerr << report.status() << "\n", 1;
  const auto t2 = clock::now();
  const double synth = std::chrono::duration<double>(t1 - t0).count();
  const double replay = std::chrono::duration<double>(t2 - t1).count();
  std::cout << absl::StrFormat("synth: %d distinct steps x %d layers x %d experts on %d ranks (%d tokens/rank), "
                               "cycled to %d steps, in %.1f s\n",
                               s.steps, s.layers, s.experts, s.world, s.tokens, steps, synth);
  std::cout << absl::StrFormat(
      "replay: %d layer-steps x %d policies for 64 ranks on %u hardware threads in %.1f s (target < 20 s: %s)\n",
      static_cast<int64_t>(trace.steps.size()), o.policies.size(), std::thread::hardware_concurrency(), replay,
      replay < 20 ? "met" : "missed");
  for (const PolicyReport& p : report->policies)
    std::cout << absl::StrFormat("  %-10s mean %.4f ms  speedup %.3fx  copies/step %.2f  plan changes %d\n", p.policy,
                                 p.mean_seconds * 1e3, p.speedup_vs_none, p.copies_per_step, p.plan_changes);
  return 0;
}
