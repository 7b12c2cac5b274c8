"""A small GPT-style decoder whose MLPs are FastMoE layers, trained data- and
expert-parallel the way FastMoE jobs are written. The one dynamoe line is the
import; FastMoE's FMOE_FASTER_* variables pick the policy:

    .venv/bin/python -m torch.distributed.run --nproc_per_node 2 examples/gpt_fastmoe.py
    FMOE_FASTER_SHADOW_ENABLE=1 FMOE_FASTER_SCHEDULE_ENABLE=1 \\
        .venv/bin/python -m torch.distributed.run --nproc_per_node 2 examples/gpt_fastmoe.py

Corpus: the GPL-3 text Debian's base-files package ships
(/usr/share/common-licenses/GPL-3), characters as tokens; --corpus FILE for
another text. Every rank samples its own batches from the same seed, so two
runs with the same seeds see the same data: their losses match step by step
whatever the placement policy (it changes where experts run, not the math).
"""
import argparse
import json
import os
import pathlib
import sys

import torch
from torch import nn
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "python"))
from dynamoe.compat.fastmoe import DistributedGroupedDataParallel, FMoETransformerMLP  # noqa: E402  was: from fmoe import ...

CORPUS = "/usr/share/common-licenses/GPL-3"


class Block(nn.Module):
    def __init__(self, d_model, heads, experts_per_rank, world_size):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.mlp = FMoETransformerMLP(num_expert=experts_per_rank, d_model=d_model, d_hidden=4 * d_model,
                                      world_size=world_size, top_k=2)

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab, seq, d_model, heads, layers, experts_per_rank, world_size):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d_model), nn.Embedding(seq, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, experts_per_rank, world_size) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab, bias=False)
        self.register_buffer("mask", torch.triu(torch.full((seq, seq), float("-inf")), 1))

    def forward(self, idx):
        n = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(n))
        for b in self.blocks:
            x = b(x, self.mask[:n, :n])
        return self.head(self.ln(x))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16, help="sequences per rank")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--experts-per-rank", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default=CORPUS)
    p.add_argument("--loss-log", help="write {'loss': [...], 'shadowed': [...]} here (rank 0)")
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    path = pathlib.Path(args.corpus)
    if path.is_file():
        text = path.read_text(errors="replace")
    else:  # no corpus file: a generated one (a counting rhyme) keeps the example runnable anywhere
        text = " ".join(f"{i} little experts routed {i % 7} tokens, then {i + 1} came." for i in range(2000))
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)

    torch.manual_seed(args.seed)  # same dense weights on every rank; expert weights differ per rank
    model = GPT(len(chars), args.seq, args.d_model, args.heads, args.layers, args.experts_per_rank, world)
    model = DistributedGroupedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    batches = torch.Generator().manual_seed(args.seed * 1000 + rank)
    losses, shadowed = [], []
    for step in range(args.steps):
        start = torch.randint(0, len(data) - args.seq - 1, (args.batch,), generator=batches)
        x = torch.stack([data[s:s + args.seq] for s in start])
        y = torch.stack([data[s + 1:s + args.seq + 1] for s in start])
        loss = F.cross_entropy(model(x).reshape(-1, len(chars)), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        model.allreduce_params()
        optimizer.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
        shadowed.append(sum(len(b.mlp.moe.stats()["shadowed"]) for b in model.module.blocks))
        if rank == 0 and (step % 20 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}  shadowed experts {shadowed[-1]}", flush=True)
    if rank == 0 and args.loss_log:
        pathlib.Path(args.loss_log).write_text(json.dumps({"loss": losses, "shadowed": shadowed}))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("DYNAMOE_LOG_LEVEL", "warning")
    main()
