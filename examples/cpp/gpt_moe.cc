// The GPT-style decoder of examples/gpt_fastmoe.py for LibTorch users: the
// MLPs are dynamoe::MoELayer (top-2, gelu, biases, as FMoETransformerMLP),
// experts spread over the ranks, launched by torchrun:
//
//   .venv/bin/python -m torch.distributed.run --nproc_per_node=2 --redirects=2 --tee=2 \
//       --no_python build/default/examples/gpt_moe [--steps 200] [--loss-log FILE]
//
// Same corpus (/usr/share/common-licenses/GPL-3, characters as tokens).
// FMOE_FASTER_* / DYNAMOE_* variables pick the policy, as for Python jobs.
// (--loss-log, not --log: newer torchrun takes --log as an abbreviation of its own options.)
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/optim/adam.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "bindings/gradients.h"
#include "bindings/moe_layer.h"
#include "common/status.h"
#include "config/launch_env.h"
#include "runtime/rendezvous.h"

namespace {

struct BlockImpl : torch::nn::Module {
  BlockImpl(int64_t d, int64_t heads, int64_t experts, const dynamoe::runtime::CommunicatorPtr& ep, int64_t index)
      : heads(heads),
        ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})))),
        ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})))),
        qkv(register_module("qkv", torch::nn::Linear(d, 3 * d))),
        proj(register_module("proj", torch::nn::Linear(d, d))),
        mlp(register_module("mlp", dynamoe::MoELayer(dynamoe::MoEOptions(d, 4 * d, experts)
                                                          .top_k(2)
                                                          .bias(true)
                                                          .normalize_topk(true)
                                                          .balance_loss_weight(0.0)
                                                          .name(absl::StrCat("block", index)),
                                                      ep))) {}

  // Causal multi-head self-attention, then the MoE MLP; pre-norm residuals.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask) {
    const int64_t b = x.size(0), n = x.size(1), d = x.size(2), hd = d / heads;
    auto parts = qkv(ln1(x)).view({b, n, 3, heads, hd}).permute({2, 0, 3, 1, 4});  // [3, b, h, n, hd]
    torch::Tensor scores = torch::matmul(parts[0], parts[1].transpose(-2, -1)) / std::sqrt(double(hd)) + mask;
    torch::Tensor a = torch::matmul(torch::softmax(scores, -1), parts[2]).transpose(1, 2).reshape({b, n, d});
    torch::Tensor h = x + proj(a);
    return h + mlp->forward(ln2(h));
  }

  int64_t heads;
  torch::nn::LayerNorm ln1, ln2;
  torch::nn::Linear qkv, proj;
  dynamoe::MoELayer mlp;
};
TORCH_MODULE(Block);

struct Args {
  int steps = 200, batch = 16, seq = 64, d_model = 64, heads = 4, layers = 2, experts_per_rank = 2, seed = 0;
  double lr = 3e-3;
  std::string corpus = "/usr/share/common-licenses/GPL-3", log;
};

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) {
      std::cerr << "gpt_moe: " << flag << " needs a value\n";
      std::exit(2);
    }
    const char* v = argv[++i];
    if (flag == "--steps") a.steps = std::atoi(v);
    else if (flag == "--batch") a.batch = std::atoi(v);
    else if (flag == "--seq") a.seq = std::atoi(v);
    else if (flag == "--layers") a.layers = std::atoi(v);
    else if (flag == "--seed") a.seed = std::atoi(v);
    else if (flag == "--corpus") a.corpus = v;
    else if (flag == "--loss-log") a.log = v;
    else {
      std::cerr << "gpt_moe: unknown argument " << flag
                << "\nusage: gpt_moe [--steps N] [--batch N] [--seq N] [--layers N] [--seed N] [--corpus FILE] "
                   "[--loss-log FILE]\n";
      std::exit(2);
    }
  }
  if (a.steps < 1 || a.batch < 1 || a.seq < 2 || a.layers < 1) {
    std::cerr << "gpt_moe: need steps, batch, layers >= 1 and seq >= 2\n";
    std::exit(2);
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = Parse(argc, argv);
  const int world_size = dynamoe::runtime::GlobalLaunchEnv().world_size.value_or(1);  // throws on a bad value
  std::shared_ptr<dynamoe::runtime::ParallelGroups> groups;
  if (world_size > 1) groups = dynamoe::ValueOrThrow(dynamoe::runtime::InitFromEnv());
  const int rank = groups ? groups->world_rank : 0;

  std::string text;
  if (std::ifstream in(args.corpus); in) {
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  } else {  // no corpus file: a generated one, as the Python example does
    for (int i = 0; i < 2000; ++i)
      text += absl::StrFormat("%d little experts routed %d tokens, then %d came. ", i, i % 7, i + 1);
  }
  std::vector<int> index(256, -1);
  int64_t vocab = 0;
  for (unsigned char c : text)
    if (index[c] < 0) index[c] = 0;
  for (int c = 0; c < 256; ++c)
    if (index[c] == 0) index[c] = static_cast<int>(vocab++);
  std::vector<int64_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = index[static_cast<unsigned char>(text[i])];
  const torch::Tensor data = torch::tensor(ids, torch::kLong);

  torch::manual_seed(args.seed);  // the same dense weights on every rank
  const int64_t d = args.d_model, E = args.experts_per_rank * world_size;
  torch::nn::Embedding tok(vocab, d), pos(args.seq, d);
  torch::nn::LayerNorm ln(torch::nn::LayerNormOptions({d}));
  torch::nn::Linear head(torch::nn::LinearOptions(d, vocab).bias(false));
  torch::nn::Module model;
  model.register_module("tok", tok);
  model.register_module("pos", pos);
  std::vector<Block> blocks;
  for (int l = 0; l < args.layers; ++l)
    blocks.push_back(model.register_module(absl::StrCat("block", l),
                                           Block(d, args.heads, E, groups ? groups->ep : dynamoe::runtime::CommunicatorPtr(), l)));
  model.register_module("ln", ln);
  model.register_module("head", head);
  const torch::Tensor mask = torch::full({args.seq, args.seq}, -INFINITY).triu(1);
  torch::optim::Adam optimizer(model.parameters(), torch::optim::AdamOptions(args.lr));

  torch::manual_seed(args.seed * 1000 + rank);  // each rank its own batches
  std::vector<double> losses;
  std::vector<int64_t> shadowed;  // per step, over every block
  for (int step = 0; step < args.steps; ++step) {
    const torch::Tensor start = torch::randint(0, data.size(0) - args.seq - 1, {args.batch}, torch::kLong);
    std::vector<torch::Tensor> xs, ys;
    for (int64_t i = 0; i < args.batch; ++i) {
      const int64_t s = start[i].item<int64_t>();
      xs.push_back(data.slice(0, s, s + args.seq));
      ys.push_back(data.slice(0, s + 1, s + args.seq + 1));
    }
    torch::Tensor h = tok(torch::stack(xs)) + pos(torch::arange(args.seq));
    for (Block& b : blocks) h = b->forward(h, mask);
    const torch::Tensor logits = head(ln(h));
    const torch::Tensor loss = torch::nn::functional::cross_entropy(logits.reshape({-1, vocab}),
                                                                    torch::stack(ys).reshape({-1}));
    optimizer.zero_grad();
    loss.backward();
    if (groups) dynamoe::ReduceGradients(model, *groups);
    optimizer.step();
    torch::Tensor mean = loss.detach().reshape({1}).clone();
    if (groups) dynamoe::ThrowIfError(groups->world->AllReduce(mean, {"gpt_moe", "loss"}));
    losses.push_back(mean.item<double>() / world_size);
    shadowed.push_back(0);
    for (Block& b : blocks) shadowed.back() += static_cast<int64_t>(b->mlp->stats().shadowed().size());
    if (rank == 0 && (step % 20 == 0 || step == args.steps - 1))
      std::cout << absl::StrFormat("step %4d  loss %.4f  shadowed experts %d\n", step, losses.back(), shadowed.back())
                << std::flush;
  }
  if (rank == 0 && !args.log.empty()) 
    std::ofstream(args.log) << "{\"loss\": [" << absl::StrJoin(losses, ", ") << "], \"shadowed\": ["
                            << absl::StrJoin(shadowed, ", ") << "]}\n";
  return 0;
}
