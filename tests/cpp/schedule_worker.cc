// One rank of the multi-process schedule test (schedule_ep_test.cc). For each
// dtype, placement policy, group size and overlap degree, a layer on the
// overlap schedule runs 2 training steps next to a sequential layer with the
// same weights, policy and inputs: outputs and gradients must match, the
// pipeline must run at most groups x degree stages, and per step (forward and
// backward) it must make fewer idle waits (waits with no other collective in
// flight) than the sequential layer by a fixed number however many stages it
// runs: 2 when x needs a gradient (step 0), 1 when not (step 1, where
// backward sends nothing back); a pipeline that waited on the host inside
// its loop would make more.
// Exit codes: 0 passed, 1 mismatch (details on stderr), 3 a dynamoe::Error.
#include <torch/torch.h>

#include <iostream>
#include <map>

#include "bindings/moe_layer.h"
#include "common/status.h"
#include "runtime/rendezvous.h"
#include "tests/cpp/worker_ulps.h"

namespace {

using dynamoe::MoELayer;
using dynamoe::MoEOptions;
using dynamoe::testing::Expect;
using dynamoe::testing::Split;
using torch::Tensor;

using dynamoe::testing::DtypeOf;

using dynamoe::testing::ExpectUlps;

// Bounds, in ulps of the reference's largest magnitude. Each row's output
// and input gradient, and the router's gradient (from those outputs), go
// through the same products as in the sequential schedule, only in smaller
// batches (chunks): bitwise equal in fp32 and bf16 (measured 0); fp64's CPU
// GEMM sums a row in an order that depends on how many rows it multiplies:
// measured up to 3 ulps, bound 4. Expert weight gradients add the chunks'
// products one chunk after another instead of in one GEMM: measured 2 ulps in
// fp32 and bf16 (bound 2), 5 in fp64 (bound 8).
struct Bounds {
  double same, reordered;
};
Bounds BoundsFor(torch::Dtype dtype) {
  if (dtype == torch::kDouble) return {4, 8};
  const double floor = dynamoe::testing::Fp32Floor(dtype);  // torch 2.x's fp32 GEMM
  return {floor, std::max(2.0, floor)};
}

struct Waits {
  int64_t waits = 0, idle = 0;
};

Waits Delta(const dynamoe::runtime::CommCounters& a, const dynamoe::runtime::CommCounters& b) {
  return {b.waits - a.waits, b.idle_waits - a.idle_waits};
}

// One training step of `m`: the waits its forward and backward made.
Waits Step(MoELayer& m, const Tensor& x, const Tensor& gy, Tensor* y) {
  for (auto& p : m->parameters()) p.mutable_grad() = Tensor();
  const auto before = m->ep_group()->counters();
  *y = m->forward(x);
  ((*y * gy).sum() + m->aux_loss).backward();
  return Delta(before, m->ep_group()->counters());
}

void Run(const std::map<std::string, std::string>& args, const dynamoe::runtime::ParallelGroups& g,
         const std::string& dtype_name, const std::string& policy, int64_t group_size, int64_t degree) {
  const int64_t E = std::stoi(args.at("experts")), d = 6, h = 10;
  const torch::Dtype dtype = DtypeOf(dtype_name);
  const Bounds bounds = BoundsFor(dtype);
  const std::vector<std::string> tokens = Split(args.at("tokens"));
  MoEOptions opts(d, h, E);
  opts.top_k(2).gated(args.at("gated") == "1").bias(true);
  torch::manual_seed(1234);
  MoELayer ref(opts, g.ep), moe(opts, g.ep);
  for (MoELayer* m : {&ref, &moe}) {
    (*m)->to(dtype);
    (*m)->set_placement(policy);
  }
  ref->set_schedule("sequential");
  moe->set_schedule("overlap", group_size, degree);
  {
    torch::NoGradGuard no_grad;
    auto src = ref->named_parameters();
    for (auto& p : moe->named_parameters()) p.value().copy_(src[p.key()]);
    ref->expert_bias[1] = 1e4;  // a hot expert, so the policies copy it
    moe->expert_bias.copy_(ref->expert_bias);
  }
  const std::string what = dtype_name + "/" + policy + "/" + moe->schedule() + " rank " + std::to_string(g.world_rank);
  const int64_t P = g.ep_size, G = std::min<int64_t>(group_size, P - 1);
  const int64_t stages = (P - 1 + G - 1) / G * degree;
  for (int step = 0; step < 2; ++step) {
    torch::manual_seed(100 + 10 * step + g.world_rank);
    const Tensor x = torch::randn({std::stoi(tokens[g.world_rank % tokens.size()]), d}).to(dtype);
    const Tensor gy = torch::randn_like(x);
    const bool input_grad = step == 0;
    const Tensor x_ref = x.clone().requires_grad_(input_grad), x_moe = x.clone().requires_grad_(input_grad);
    Tensor y_ref, y;
    const Waits w_ref = Step(ref, x_ref, gy, &y_ref);
    const Waits w = Step(moe, x_moe, gy, &y);
    const std::string at = what + " step " + std::to_string(step);
    ExpectUlps(y, y_ref, bounds.same, at + ": output");
    if (input_grad) ExpectUlps(x_moe.grad(), x_ref.grad(), bounds.same, at + ": gradient of x");
    auto ref_params = ref->named_parameters();
    for (auto& p : moe->named_parameters()) {
      const Tensor a = p.value().grad(), b = ref_params[p.key()].grad();
      Expect(a.defined() == b.defined(), at + ": gradient of " + p.key() + " defined on one side only");
      const bool router = p.key().rfind("gate.", 0) == 0;  // from each token's outputs: same arithmetic
      if (a.defined() && b.defined())
        ExpectUlps(a, b, router ? bounds.same : bounds.reordered, at + ": gradient of " + p.key());
    }
    const dynamoe::MoEStats& s = moe->stats();
    Expect(s.overlapped && !ref->stats().overlapped, at + ": stats().overlapped");
    Expect(s.pipeline_stages >= 1 && s.pipeline_stages <= stages,
           at + ": " + std::to_string(s.pipeline_stages) + " stages, expected 1 to " + std::to_string(stages));
    Expect(s.plan_hash() == ref->stats().plan_hash(), at + ": the schedule changed the plan");
    const int64_t fewer = input_grad ? 2 : 1;
    if (s.pipeline_stages >= 2)
      Expect(w.idle == w_ref.idle - fewer, at + ": " + std::to_string(w.idle) + " idle waits (of " +
                                               std::to_string(w.waits) + ") where sequential made " +
                                               std::to_string(w_ref.idle) + " (of " + std::to_string(w_ref.waits) +
                                               "); expected " + std::to_string(fewer) + " fewer");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const auto args = dynamoe::testing::ParseArgs(argc, argv,
                                                {{"experts", "8"},
                                                 {"gated", "0"},
                                                 {"tokens", "13,0,17,9"},
                                                 {"policies", "none,fastermoe,adaptive,eplb"},
                                                 {"groups", "1,4"},
                                                 {"degrees", "1,3"},
                                                 {"dtypes", "double"}});
  try {
    auto groups = dynamoe::ValueOrThrow(dynamoe::runtime::InitFromEnv(0));
    for (const std::string& dtype : Split(args.at("dtypes")))
      for (const std::string& policy : Split(args.at("policies")))
        for (const std::string& gs : Split(args.at("groups")))
          for (const std::string& deg : Split(args.at("degrees")))
            Run(args, *groups, dtype, policy, std::stoi(gs), std::stoi(deg));
  } catch (const dynamoe::Error& e) {
    std::cerr << e.what() << std::endl;
    return 3;
  }
  if (dynamoe::testing::ExitCode() == 0) std::cout << "schedule worker: all checks passed" << std::endl;
  return dynamoe::testing::ExitCode();
}
