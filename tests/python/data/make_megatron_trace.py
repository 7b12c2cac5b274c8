"""Writes a Megatron-Core router trace directory (router_trace_rank{R}.jsonl,
the record layout of megatron/core/transformer/moe/router_trace.py) with
skewed synthetic routing, for the README's replay example and its 1 GB
measurement:

    python3 tests/python/data/make_megatron_trace.py DIR [--ranks 2] [--layers 4] [--mtp 1] [--experts 64]
        [--topk 8] [--tokens 1024] [--steps 20 | --mb-per-rank N] [--seed 0]
"""
import argparse
import json
import os
import random


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--mtp", type=int, default=1, help="MTP heads (one MoE layer each)")
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--topk", type=int, default=8)
    p.add_argument("--tokens", type=int, default=1024, help="tokens per rank, layer and step")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--mb-per-rank", type=float, default=0, help="write steps until each file has this many MB")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(a.dir, exist_ok=True)
    layers = [("decoder", None, l) for l in range(a.layers)] + [("mtp", m, 0) for m in range(a.mtp)]
    for rank in range(a.ranks):
        # A few pre-drawn batches per rank, each from its own skewed popularity,
        # reused at random: generation stays fast at gigabytes.
        pool = []
        for _ in range(16):
            weights = [1.0 / (i + 1) ** 0.8 for i in range(a.experts)]
            rng.shuffle(weights)
            rows = []
            for _ in range(a.tokens):
                picked = set()
                while len(picked) < a.topk:
                    picked.add(rng.choices(range(a.experts), weights)[0])
                rows.append(sorted(picked))
            pool.append(json.dumps(rows))
        limit = a.mb_per_rank * 2**20
        written = step = 0
        with open(os.path.join(a.dir, f"router_trace_rank{rank}.jsonl"), "w") as f:
            while (step < a.steps) if not limit else (written < limit):
                for block, mtp, layer in layers:
                    head = (f'{{"step": {step}, "stage": "pre_dispatch", "block": "{block}", "layer": {layer}, '
                            f'"rank": {rank}, "num_tokens": {a.tokens}, "topk": {a.topk}, ')
                    if mtp is not None:
                        head += f'"mtp_idx": {mtp}, '
                    line = head + '"top_indices": ' + rng.choice(pool) + "}\n"
                    f.write(line)
                    written += len(line)
                step += 1
        print(f"{a.dir}/router_trace_rank{rank}.jsonl: {step} steps x {len(layers)} layers, {written / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
