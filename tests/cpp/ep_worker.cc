// One rank of a multi-process expert-parallel test, started by ep_test.cc
// with torchrun's variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE).
//
// scenario=equal: the distributed layer against the single-process layer
// with the same weights: outputs, counts, raw gradients (expert gradients
// summed over the EP group's tokens) and ReduceGradients' result.
// scenario=custom: custom experts (ExpertFactory) against a plain per-token
// loop: outputs, input, gate and expert gradients.
// scenario=bias: the aux-loss-free bias update against one computed here.
// scenario=die|hang: the last rank exits / stalls inside its expert during
// step 2; the others must fail within DYNAMOE_TIMEOUT_S naming it.
// scenario=diverge: rank 1 calls another layer; every rank must fail.
// scenario=collectives: every Communicator operation on hand-computable data.
// scenario=config: just start (the launcher gives rank 1 another config).
// scenario=fault: `steps` training steps of a built-in FFN layer with a hot
// expert (placement and schedule from the environment), each followed by
// ReduceGradients, so the EP, expert-data-parallel and world groups all run;
// DYNAMOE_FAULT (runtime/fault_injection.h) kills or freezes one rank.
//
// Exit codes: 0 passed, 1 mismatch (details on stderr), 3 a dynamoe::Error
// (its message on stderr, "elapsed_s=<seconds>" on stdout).
#include <torch/nn/modules/linear.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <numeric>
#include <thread>

#include "bindings/gradients.h"
#include "bindings/moe_layer.h"
#include "common/status.h"
#include "runtime/rendezvous.h"
#include "tests/cpp/custom_expert_reference.h"
#include "tests/cpp/worker_ulps.h"

namespace {

using dynamoe::MoELayer;
using dynamoe::MoEOptions;
using torch::Tensor;

std::map<std::string, std::string> Args(int argc, char** argv) {
  return dynamoe::testing::ParseArgs(argc, argv,
                                     {{"scenario", "equal"}, {"experts", "12"}, {"top_k", "2"},
                                      {"capacity", "0"},     {"ep_size", "0"},   {"dtype", "double"},
                                      {"gated", "0"},        {"tokens", "5,0,17,9"}, {"steps", "3"}});
}

int TokensOf(const std::string& list, int rank) {
  std::vector<int> t;
  std::stringstream ss(list);
  for (std::string item; std::getline(ss, item, ',');) t.push_back(std::stoi(item));
  return t[rank % t.size()];
}

using dynamoe::testing::Expect;
using dynamoe::testing::ExpectUlps;

// Local slice [first, first + n) of a full-expert parameter.
Tensor Slice(const Tensor& full, int64_t first, int64_t n) { return full.narrow(0, first, n); }

int Equal(const std::map<std::string, std::string>& args, const dynamoe::runtime::ParallelGroups& g) {
  const auto dtype = args.at("dtype") == "float"      ? torch::kFloat
                     : args.at("dtype") == "bfloat16" ? torch::kBFloat16
                                                      : torch::kDouble;
  // Each token's output, the gate gradient and the aux loss use this rank's
  // tokens only, with the same arithmetic as one process, except that an
  // expert multiplies more rows here than in the reference: BatchSizeUlps
  // (torch.mm of the first m rows of a [40, 10] x [10, 6] fp64 product differs
  // from the same rows of the full product for m = 1, 3, 7).
  // Expert gradients add the same products over several ranks' rows in
  // another order (one GEMM over all rows here; one backward per rank there,
  // rounded to the dtype in between; then the all-reduce): measured 1 ulp of
  // the largest gradient in bf16 and fp32, 3 in fp64; bound 2 and 4.
  const bool fp64 = dtype == torch::kDouble;
  const double kSameArithmetic = dynamoe::testing::BatchSizeUlps(dtype),
               kReordered = std::max(fp64 ? 4.0 : 2.0, dynamoe::testing::Fp32Floor(dtype));
  const int64_t E = std::stoi(args.at("experts")), d = 6, h = 10;
  MoEOptions opts(d, h, E);
  opts.top_k(std::stoi(args.at("top_k"))).capacity_factor(std::stod(args.at("capacity")));
  opts.gated(args.at("gated") == "1").bias(true).min_capacity(1);
  torch::manual_seed(1234);  // the same full weights on every rank
  MoELayer ref(opts);
  ref->to(dtype);
  MoELayer dist(opts, g.ep);
  dist->to(dtype);
  const int64_t first = dist->first_expert(), El = dist->num_local_experts();
  {
    torch::NoGradGuard no_grad;
    // Expert E-1 is never selected: an expert that gets no tokens anywhere.
    ref->expert_bias[E - 1] = -1e4;
    dist->gate->weight.copy_(ref->gate->weight);
    dist->expert_bias.copy_(ref->expert_bias);
    for (auto [dst, src] : {std::pair{dist->w1, ref->w1}, {dist->w2, ref->w2}, {dist->b1, ref->b1},
                            {dist->b2, ref->b2}, {dist->w3, ref->w3}})
      if (dst.defined()) dst.copy_(Slice(src, first, El));
  }
  auto tokens = [&](int r) { return torch::randn({TokensOf(args.at("tokens"), r), d}, torch::TensorOptions().dtype(dtype)); };
  auto input = [&](int r) {
    torch::manual_seed(100 + r);
    Tensor x = tokens(r);
    Tensor gy = torch::randn_like(x);
    return std::pair{x, gy};
  };
  auto loss_of = [](MoELayer& m, const Tensor& x, const Tensor& gy) {
    const Tensor y = m->forward(x);
    return std::pair{y, (y * gy).sum() + m->aux_loss.to(y.scalar_type())};
  };
  auto grads = [](MoELayer& m) {
    std::map<std::string, Tensor> out;
    for (auto& p : m->named_parameters())
      out[p.key()] = p.value().grad().defined() ? p.value().grad().clone() : torch::zeros_like(p.value());
    return out;
  };
  auto zero = [](MoELayer& m) {
    for (auto& p : m->parameters()) p.mutable_grad() = Tensor();
  };
  const auto [x, gy] = input(g.world_rank);
  auto [y, loss] = loss_of(dist, x, gy);
  loss.backward();
  const auto dist_raw = grads(dist);
  Expect(dist->stats().counts.size(0) == g.ep_size, "count matrix has ep_size rows");

  // Reference: this rank's tokens alone (output, gate gradient).
  auto [y_ref, loss_ref] = loss_of(ref, x, gy);
  loss_ref.backward();
  ExpectUlps(y, y_ref, kSameArithmetic, "output");
  ExpectUlps(dist_raw.at("gate.weight"), ref->gate->weight.grad(), kSameArithmetic, "gate gradient of this rank");
  ExpectUlps(dist->aux_loss, ref->aux_loss, kSameArithmetic, "aux loss");
  // Count matrix rows: the reference's kept counts for each EP-group member.
  const auto members = dynamoe::ValueOrThrow(dynamoe::runtime::EpGroupMembers(g.world_rank, g.world_size, g.ep_size));
  zero(ref);
  for (size_t i = 0; i < members.size(); ++i) {
    const auto [xr, gyr] = input(members[i]);
    loss_of(ref, xr, gyr).second.backward();
    Expect(torch::equal(dist->stats().counts[i], ref->stats().counts[0]),
           "count matrix row " + std::to_string(i));
  }
  const auto ref_group = grads(ref);
  for (const char* name : {"w1", "w2", "w3", "b1", "b2"})
    if (ref_group.count(name))
      ExpectUlps(dist_raw.at(name), Slice(ref_group.at(name), first, El), kReordered,
                  std::string("raw gradient of ") + name + " (EP group's tokens)");
  // ReduceGradients: everything averaged over the world's tokens.
  zero(ref);
  for (int r = 0; r < g.world_size; ++r) {
    const auto [xr, gyr] = input(r);
    loss_of(ref, xr, gyr).second.backward();
  }
  dynamoe::ReduceGradients(*dist, g);
  const auto dist_reduced = grads(dist);
  for (auto& [name, ref_grad] : grads(ref)) {
    const bool expert = name == "w1" || name == "w2" || name == "w3" || name == "b1" || name == "b2";
    ExpectUlps(dist_reduced.at(name), (expert ? Slice(ref_grad, first, El) : ref_grad) / g.world_size, kReordered,
                "reduced gradient of " + name);
  }
  return dynamoe::testing::ExitCode();
}

// Rank r's tokens and output gradient (fp64), the same on every rank that asks.
std::pair<Tensor, Tensor> InputOf(const std::string& tokens, int r, int step, int64_t d) {
  torch::manual_seed(100 + 10 * step + r);
  const Tensor x = torch::randn({TokensOf(tokens, r), d}, torch::kDouble);
  return {x, torch::randn_like(x)};
}

// Custom experts (ExpertFactory) under expert parallelism against the plain
// per-token loop (custom_expert_reference.h) over every expert: this rank's
// output, input and gate gradients, and each local expert's gradients summed
// over the EP group's tokens. Expert e's weights depend on e alone, so a rank
// that computed another expert's rows would fail.
int CustomExperts(const std::map<std::string, std::string>& args, const dynamoe::runtime::ParallelGroups& g) {
  using dynamoe::testing::IndexedExpert;
  const int64_t E = std::stoi(args.at("experts")), d = 6, k = std::stoi(args.at("top_k"));
  torch::manual_seed(1234);  // the same gate on every rank
  MoELayer dist(MoEOptions(d, 8, E).top_k(k), [&](int64_t e) { return torch::nn::AnyModule(IndexedExpert(e, d)); },
                g.ep);
  dist->to(torch::kDouble);
  std::vector<IndexedExpert> plain;
  for (int64_t e = 0; e < E; ++e) plain.push_back(IndexedExpert(e, d));
  const Tensor gate = dist->gate->weight.detach().clone().requires_grad_(true);
  auto [x, gy] = InputOf(args.at("tokens"), g.world_rank, 0, d);
  const Tensor xd = x.clone().requires_grad_(true), xr = x.clone().requires_grad_(true);
  const Tensor y = dist->forward(xd);
  (y * gy).sum().backward();
  const Tensor y_ref = dynamoe::testing::PlainCustomMoE(xr, gate, k, plain);
  (y_ref * gy).sum().backward();
  // fp64; the plain loop computes each token alone and sums its k terms (and
  // the gradients over tokens) in another order than the layer's batched rows:
  // measured up to 2 ulps of the largest value, bound 4 (an expert swapped
  // for another is off by O(1)).
  const double kReordered = 4;
  ExpectUlps(y, y_ref, kReordered, "custom experts: output");
  if (xd.grad().defined() && xr.grad().defined()) ExpectUlps(xd.grad(), xr.grad(), kReordered, "custom experts: input gradient");
  else Expect(x.size(0) == 0, "custom experts: input gradient missing");
  if (x.size(0) > 0) ExpectUlps(dist->gate->weight.grad(), gate.grad(), kReordered, "custom experts: gate gradient");
  // Expert gradients: every EP-group member's tokens through the plain loop.
  for (auto& m : plain) m->zero_grad();
  const auto members = dynamoe::ValueOrThrow(dynamoe::runtime::EpGroupMembers(g.world_rank, g.world_size, g.ep_size));
  for (int member : members) {
    auto [xm, gym] = InputOf(args.at("tokens"), member, 0, d);
    if (xm.size(0) == 0) continue;  // nothing to differentiate
    (dynamoe::testing::PlainCustomMoE(xm, gate, k, plain) * gym).sum().backward();
  }
  const int64_t first = dist->first_expert();
  int64_t with_grad = 0;
  for (int64_t i = 0; i < dist->num_local_experts(); ++i) {
    const auto mine = dist->experts[i]->named_parameters();
    const auto want = plain[first + i]->named_parameters();
    for (const char* name : {"w", "b"}) {
      const Tensor a = mine[name].grad(), b = want[name].grad();
      const std::string what = "custom expert " + std::to_string(first + i) + " gradient of " + name;
      Expect(a.defined() == b.defined(), what + " defined on one side only");
      if (a.defined() && b.defined()) ExpectUlps(a, b, kReordered, what), ++with_grad;
    }
  }
  Expect(dist->experts->size() == static_cast<size_t>(dist->num_local_experts()), "one module per local expert");
  // All-gathered: some expert of the group got rows, so the gradients were compared.
  Tensor count = torch::full({1}, with_grad, torch::kLong), all = torch::empty({g.ep_size}, torch::kLong);
  dynamoe::ThrowIfError(g.ep->AllGather(count, all, {"test", "custom"}));
  Expect(all.sum().item<int64_t>() > 0, "no expert of the group received rows");
  return dynamoe::testing::ExitCode();
}

// The aux-loss-free bias (bias_update_rate > 0) over `steps` training
// forwards with capacity drops: after each, expert_bias must equal
// bias + rate * sign(mean(load) - load), load being the EP group's routed
// (before capacity) assignments per expert, which every rank computes here
// from every member's tokens with a plain top-k of softmax + bias; and be
// identical on every rank of the group (of the world when ep_size = world).
int BiasUpdate(const std::map<std::string, std::string>& args, const dynamoe::runtime::ParallelGroups& g) {
  const int64_t E = std::stoi(args.at("experts")), d = 6, k = std::stoi(args.at("top_k"));
  const double rate = 0.01, cf = std::stod(args.at("capacity"));
  torch::manual_seed(1234);
  MoELayer dist(MoEOptions(d, 10, E).top_k(k).capacity_factor(cf).min_capacity(1).bias_update_rate(rate), g.ep);
  dist->to(torch::kDouble);
  const Tensor gate = dist->gate->weight.detach();
  const auto members = dynamoe::ValueOrThrow(dynamoe::runtime::EpGroupMembers(g.world_rank, g.world_size, g.ep_size));
  Tensor bias = torch::zeros({E}, torch::kDouble);
  bool routed_differs_from_kept = false;
  for (int step = 0; step < std::stoi(args.at("steps")); ++step) {
    Tensor routed = torch::zeros({E}, torch::kDouble), kept = torch::zeros({E}, torch::kDouble);
    for (int member : members) {
      const Tensor xm = InputOf(args.at("tokens"), member, step, d).first;
      const Tensor key = torch::softmax(torch::mm(xm, gate.t()), -1) + bias;
      Tensor mine = torch::zeros({E}, torch::kDouble);
      for (int64_t t = 0; t < xm.size(0); ++t) {
        std::vector<int64_t> order(E);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t a, int64_t b) { return key[t][a].item<double>() > key[t][b].item<double>(); });
        for (int64_t j = 0; j < k; ++j) mine[order[j]] += 1;
      }
      // Positional capacity per source rank keeps the first `cap` of each expert.
      const double cap = std::max(1.0, std::ceil(k * xm.size(0) / double(E) * cf));
      routed += mine;
      kept += cf > 0 ? mine.clamp_max(cap) : mine;
    }
    auto update = [&](const Tensor& load) { return bias + torch::sign(load.mean() - load) * rate; };
    const Tensor want = update(routed);
    routed_differs_from_kept = routed_differs_from_kept || !torch::equal(want, update(kept));
    auto [x, gy] = InputOf(args.at("tokens"), g.world_rank, step, d);
    dist->forward(x);
    ExpectUlps(dist->expert_bias, want, 0, "expert_bias after step " + std::to_string(step));
    bias = want;
  }
  Expect(!torch::equal(bias, torch::zeros_like(bias)), "the bias never moved");
  Expect(routed_differs_from_kept, "the fixture cannot tell routed from kept loads (no step where they differ)");
  Tensor root = dist->expert_bias.clone();
  dynamoe::ThrowIfError(g.ep->Broadcast(root, 0, {"test", "bias"}));
  Expect(torch::equal(root, dist->expert_bias), "expert_bias identical on every rank of the EP group");
  // Only the EP group's loads count: with ep_size < world each group's bias
  // follows its own tokens, and the groups' biases differ (as implemented).
  if (g.ep_size == g.world_size) {
    dynamoe::ThrowIfError(g.world->Broadcast(root, 0, {"test", "bias_world"}));
    Expect(torch::equal(root, dist->expert_bias), "expert_bias identical on every rank");
  }
  return dynamoe::testing::ExitCode();
}

// Every Communicator operation, blocking and async, against values each rank
// can compute: all-gather, uneven all-to-all (bf16 and float), broadcast,
// reduce, all-reduce (bf16 through fp32), barrier.
int Collectives(const dynamoe::runtime::ParallelGroups& g) {
  using dynamoe::ThrowIfError;
  const auto& comm = g.world;
  const int r = comm->rank(), P = comm->size();
  const dynamoe::runtime::CollectiveTag tag{"test", "collectives"};
  Tensor mine = torch::full({2}, r + 1, torch::kLong), all = torch::empty({2 * P}, torch::kLong);
  ThrowIfError(comm->AllGather(mine, all, tag));
  for (int i = 0; i < P; ++i) Expect(all[2 * i].item<int64_t>() == i + 1, "all_gather slot " + std::to_string(i));
  for (auto dtype : {torch::kBFloat16, torch::kFloat}) {
    // Rank r sends (r + j) % 3 rows of value 100 r + j to rank j.
    std::vector<int64_t> send(P), recv(P);
    std::vector<Tensor> parts;
    for (int j = 0; j < P; ++j) {
      send[j] = (r + j) % 3;
      recv[j] = (j + r) % 3;
      parts.push_back(torch::full({send[j], 4}, 100 * r + j, torch::TensorOptions().dtype(dtype)));
    }
    Tensor out = torch::empty({std::accumulate(recv.begin(), recv.end(), int64_t{0}), 4}, parts[0].options());
    auto handle = comm->AllToAllAsync(torch::cat(parts), out, send, recv, tag);
    ThrowIfError(handle->Wait());
    int64_t off = 0;
    for (int i = 0; i < P; ++i) {
      if (recv[i]) Expect(torch::all(out.narrow(0, off, recv[i]) == 100 * i + r).item<bool>(), "all_to_all from " + std::to_string(i));
      off += recv[i];
    }
  }
  Tensor b = torch::full({3}, r == P - 1 ? 7.0 : 0.0);
  ThrowIfError(comm->Broadcast(b, P - 1, tag));
  Expect(torch::all(b == 7).item<bool>(), "broadcast");
  Tensor red = torch::full({3}, static_cast<double>(r + 1), torch::kDouble);
  ThrowIfError(comm->Reduce(red, 1 % P, tag));
  if (r == 1 % P) Expect(torch::all(red == P * (P + 1) / 2).item<bool>(), "reduce at root");
  Tensor ar = torch::full({5}, 0.5 * (r + 1), torch::TensorOptions().dtype(torch::kBFloat16));
  auto h1 = comm->AllReduceAsync(ar, tag);
  auto h2 = comm->BarrierAsync(tag);
  ThrowIfError(h1->Wait());
  ThrowIfError(h2->Wait());
  Expect(torch::all(ar.to(torch::kFloat) == 0.5f * P * (P + 1) / 2).item<bool>(), "all_reduce bf16");
  Expect(comm->counters().collectives == 7, "7 collectives counted, got " + std::to_string(comm->counters().collectives));
  return dynamoe::testing::ExitCode();
}

// A custom expert that, on the doomed rank in step 2, exits or stalls.
struct DoomedImpl : torch::nn::Module {
  DoomedImpl(bool doomed, std::string how) : doomed(doomed), how(std::move(how)) {}
  Tensor forward(const Tensor& x) {
    if (doomed && step == 2 && !fired) {
      fired = true;
      if (how == "die") std::_Exit(0);
      std::this_thread::sleep_for(std::chrono::seconds(std::stoi(how.substr(5))));
    }
    return x * 2;
  }
  bool doomed;
  std::string how;  // "die", or "hang:<seconds>"
  static inline int step = 0;
  static inline bool fired = false;  // one stall per process, not one per expert
};
TORCH_MODULE(Doomed);

int Failure(const std::map<std::string, std::string>& args, const dynamoe::runtime::ParallelGroups& g) {
  const std::string scenario = args.at("scenario");
  const std::string how = scenario == "hang" ? "hang:" + args.at("hang_s") : scenario;
  MoEOptions opts(4, 8, 12);
  opts.top_k(2).name("moe");
  const bool doomed = g.world_rank == g.world_size - 1;
  MoELayer layer(opts, [&](int64_t) { return torch::nn::AnyModule(Doomed(doomed, how)); }, g.ep);
  MoELayer other(MoEOptions(4, 8, 12).name("other_layer"), g.ep);
  torch::manual_seed(7 + g.world_rank);
  const Tensor x = torch::randn({64, 4});
  const auto t0 = std::chrono::steady_clock::now();
  try {
    for (DoomedImpl::step = 1; DoomedImpl::step <= 2; ++DoomedImpl::step) {
      if (scenario == "diverge" && g.world_rank == 1) other->forward(x);
      else layer->forward(x);
    }
  } catch (const std::exception& e) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << "elapsed_s=" << elapsed << std::endl;
    std::cerr << e.what() << std::endl;
    return 3;
  }
  std::cerr << "no error was raised" << std::endl;
  return 1;
}

int FaultRun(const std::map<std::string, std::string>& args, const dynamoe::runtime::ParallelGroups& g) {
  const int64_t experts = std::stoi(args.at("experts"));
  MoELayer layer(MoEOptions(8, 16, experts).top_k(2).name("moe"), g.ep);
  torch::manual_seed(11 + g.world_rank);
  // Tokens leaning towards expert 0, so the placement policies copy it.
  const Tensor w0 = layer->gate->weight[0].detach();
  // Requires grad, as a layer's input inside a model does (the backward then sends row gradients back).
  const Tensor x = (torch::randn({48, 8}) + 2.0 * w0 / w0.norm()).requires_grad_(true);
  for (int step = 1; step <= std::stoi(args.at("steps")); ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      layer->zero_grad();
      const Tensor y = layer->forward(x);
      ((y * y).sum() + layer->aux_loss).backward();
      dynamoe::ReduceGradients(*layer, g);
    } catch (const std::exception& e) {
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::cout << "elapsed_s=" << elapsed << " step=" << step << std::endl;
      std::cerr << e.what() << std::endl;
      // Rank 0 hosts the store here (torchrun's agent does in real jobs, and
      // outlives the workers): it stays up a moment so that a peer still
      // diagnosing reaches the store rather than finding it gone.
      if (g.world_rank == 0) std::this_thread::sleep_for(std::chrono::seconds(2));
      return 3;
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const auto args = Args(argc, argv);
  try {
    auto groups = dynamoe::ValueOrThrow(dynamoe::runtime::InitFromEnv(std::stoi(args.at("ep_size"))));
    const std::string scenario = args.at("scenario");
    if (scenario == "equal") return Equal(args, *groups);
    if (scenario == "custom") return CustomExperts(args, *groups);
    if (scenario == "bias") return BiasUpdate(args, *groups);
    if (scenario == "config") return 0;
    if (scenario == "collectives") return Collectives(*groups);
    if (scenario == "fault") return FaultRun(args, *groups);
    return Failure(args, *groups);
  } catch (const dynamoe::Error& e) {
    std::cout << "elapsed_s=0" << std::endl;
    std::cerr << e.what() << std::endl;
    return 3;
  }
}
