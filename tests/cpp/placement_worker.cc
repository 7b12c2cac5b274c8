// One rank of the multi-process placement test (placement_ep_test.cc).
// For each dtype, routing (hot: every token's first choice is expert 1; equal: the
// random gate; dead: expert E-1 never chosen) and each policy, a layer with
// that policy runs 3 steps next to a `none` layer with the same weights on
// the same inputs: outputs and gradients must match, the plan hash must be
// the same on every rank, and copies must exist where the skew calls for them.
// Exit codes: 0 passed, 1 mismatch (details on stderr), 3 a dynamoe::Error.
#include <torch/torch.h>

#include <iostream>
#include <map>
#include <numeric>

#include "bindings/moe_layer.h"
#include "common/status.h"
#include "runtime/rendezvous.h"
#include "tests/cpp/worker_ulps.h"

namespace {

using dynamoe::MoELayer;
using dynamoe::MoEOptions;
using torch::Tensor;

using dynamoe::testing::Expect;
using dynamoe::testing::Split;
using dynamoe::testing::ExpectUlps;

// Bounds, in ulps of the reference's largest magnitude. A copied expert runs
// the same products on another rank, in a batch of another size: outputs and
// the router's gradient (from those outputs) are bitwise equal in fp32 and
// bf16 (measured 0); fp64's CPU GEMM sums a row in an order that depends on
// how many rows it multiplies: measured up to 2 ulps, bound 4. A copied
// expert's gradient is the owner's part plus the copies' parts, each rounded
// to the dtype and added after the exchange instead of in one GEMM: measured
// 2 ulps in fp32, 2.5 in bf16 with 4 holders (bound 3), 3 in fp64 (bound 8).
struct Bounds {
  double same, reordered;
};
Bounds BoundsFor(torch::Dtype dtype) {
  if (dtype == torch::kDouble) return {4, 8};
  return {0, 3};
}

using dynamoe::testing::DtypeOf;

// Gathers one int64 from every rank of the group.
std::vector<int64_t> GatherAll(const dynamoe::runtime::CommunicatorPtr& comm, int64_t value) {
  Tensor mine = torch::full({1}, value, torch::kLong), all = torch::empty({comm->size()}, torch::kLong);
  dynamoe::ThrowIfError(comm->AllGather(mine, all, {"test", "gather"}));
  return std::vector<int64_t>(all.data_ptr<int64_t>(), all.data_ptr<int64_t>() + comm->size());
}

void Run(const std::map<std::string, std::string>& args, const dynamoe::runtime::ParallelGroups& g,
         const std::string& dtype_name, const std::string& routing, const std::string& policy) {
  const torch::Dtype dtype = DtypeOf(dtype_name);
  const Bounds bounds = BoundsFor(dtype);
  const int64_t E = std::stoi(args.at("experts")), d = 6, h = 10;
  const std::vector<std::string> tokens = Split(args.at("tokens"));
  MoEOptions opts(d, h, E);
  opts.top_k(2).gated(args.at("gated") == "1").bias(true);
  torch::manual_seed(1234);
  MoELayer ref(opts, g.ep);
  MoELayer moe(opts, g.ep);
  ref->to(dtype);
  moe->to(dtype);
  ref->set_placement("none");
  moe->set_placement(policy);
  {
    torch::NoGradGuard no_grad;
    auto src = ref->named_parameters();
    for (auto& p : moe->named_parameters()) p.value().copy_(src[p.key()]);
    if (routing == "hot") ref->expert_bias[1] = 1e4;
    if (routing == "dead") ref->expert_bias[E - 1] = -1e4;
    moe->expert_bias.copy_(ref->expert_bias);
  }
  const std::string what = dtype_name + "/" + routing + "/" + policy + " rank " + std::to_string(g.world_rank);
  int64_t copies_seen = 0;
  for (int step = 0; step < 3; ++step) {
    torch::manual_seed(100 + 10 * step + g.world_rank);
    const Tensor x = torch::randn({std::stoi(tokens[g.world_rank % tokens.size()]), d}, torch::kDouble).to(dtype);
    const Tensor gy = torch::randn_like(x);
    for (auto* m : {&ref, &moe})
      for (auto& p : (*m)->parameters()) p.mutable_grad() = Tensor();
    const Tensor y_ref = ref->forward(x);
    ((y_ref * gy).sum() + ref->aux_loss).backward();
    const Tensor y = moe->forward(x);
    ((y * gy).sum() + moe->aux_loss).backward();
    const std::string at = what + " step " + std::to_string(step);
    ExpectUlps(y, y_ref, bounds.same, at + ": output");
    auto ref_params = ref->named_parameters();
    for (auto& p : moe->named_parameters()) {
      const Tensor a = p.value().grad(), b = ref_params[p.key()].grad();
      Expect(a.defined() == b.defined(), at + ": gradient of " + p.key() + " defined on one side only");
      const bool router = p.key().rfind("gate.", 0) == 0;  // from each token's outputs: same arithmetic
      if (a.defined() && b.defined())
        ExpectUlps(a, b, router ? bounds.same : bounds.reordered, at + ": gradient of " + p.key());
    }
    const dynamoe::MoEStats& s = moe->stats();
    const auto hashes = GatherAll(g.ep, static_cast<int64_t>(s.plan_hash));
    for (int64_t hsh : hashes) Expect(hsh == hashes[0], at + ": plan hash differs between ranks");
    const int64_t copies = std::accumulate(s.replicas.begin(), s.replicas.end(), int64_t{0});
    Expect(static_cast<int64_t>(s.replicas.size()) == E, at + ": replicas has one entry per expert");
    Expect(s.predicted_step_seconds > 0, at + ": predicted_step_seconds > 0");
    if (policy == "none") Expect(copies == 0 && s.shadowed.empty(), at + ": none made copies");
    if (routing == "dead") Expect(s.replicas[E - 1] == 0, at + ": the expert with no tokens was copied");
    if (routing == "hot" && policy != "none")
      Expect(s.replicas[1] > 0, at + ": the hot expert 1 has no copy");
    const auto received = GatherAll(g.ep, s.weight_bytes_received);
    const int64_t total_received = std::accumulate(received.begin(), received.end(), int64_t{0});
    Expect((copies > 0) == (total_received > 0), at + ": weights moved iff copies exist");
    for (int64_t e : s.shadowed) Expect(s.replicas[e] == g.ep_size - 1, at + ": shadowed expert on every rank");
    copies_seen += copies;
  }
  if (g.world_rank == 0)
    std::cout << dtype_name << "/" << routing << "/" << policy << ": " << copies_seen << " copies over 3 steps, last plan "
              << moe->stats().shadowed.size() << " shadowed" << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  const auto args = dynamoe::testing::ParseArgs(argc, argv,
                                                {{"experts", "8"},
                                                 {"gated", "0"},
                                                 {"tokens", "13,0,17,9"},
                                                 {"policies", "none,fastermoe,adaptive,eplb"},
                                                 {"routings", "hot,equal,dead"},
                                                 {"dtypes", "double"}});
  try {
    auto groups = dynamoe::ValueOrThrow(dynamoe::runtime::InitFromEnv(0));
    for (const std::string& dtype : Split(args.at("dtypes")))
      for (const std::string& routing : Split(args.at("routings")))
        for (const std::string& policy : Split(args.at("policies"))) Run(args, *groups, dtype, routing, policy);
  } catch (const dynamoe::Error& e) {
    std::cerr << e.what() << std::endl;
    return 3;
  }
  return dynamoe::testing::ExitCode();
}
