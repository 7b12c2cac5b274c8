#!/usr/bin/env python3
"""Synthetic routing traces for the placement targets (bench/placement_targets.sh).

    /usr/bin/python3 bench/make_traces.py OUT_DIR [--steps 200] [--ranks 16] [--tokens 8192] [--seed 0]

writes, in dynamoe's binary trace format (docs/trace-format.md), one trace per
kind, each recorded on --ranks ranks (a replay for more ranks re-homes them:
rank r routes like recorded rank r mod --ranks), --tokens tokens per rank:

  zipf1.0.dmtrace, zipf1.2.dmtrace   256 experts, top-8; expert popularity
      Zipf(s) over a fixed random order of the experts, and the hot set drifts:
      every 25 steps the order shifts by 3, so other experts become the hot ones.
  olmoe-like.dmtrace   64 experts, top-8, 2 layers, a drifting domain (below).

A token picks top-k distinct experts. Each rank's count for expert e is drawn
Binomial(tokens, pi_e), pi_e the probability that a token includes e (sum k):
the per-expert marginals of top-k routing, without simulating every token.
For Zipf, pi is the inclusion probability of k weighted draws without
replacement (Gumbel top-k, estimated once on 200,000 tokens): what
`dynamoe-replay synth` draws token by token.

OLMoE-like: OLMoE-1B-7B (Muennighoff et al., "OLMoE: Open Mixture-of-Experts
Language Models", arXiv:2409.02060) has 64 experts per layer, top-8, dropless
routing with a load-balancing loss, and its routing analysis (section
"Domain specialization") shows experts taking well above the uniform 8/64
share of a domain's tokens (most on arXiv and GitHub) while others sit below
it. We found no per-expert load table we could read here, so the numbers
below are our ASSUMPTION, chosen to give a max/mean expert load per step of
about 2-3 (the script prints the value it got):
  - 5 domains (as in that analysis: C4, Books, arXiv, GitHub, Wikipedia);
  - per layer, a generalist skew shared by all domains: log-normal, sigma 0.35;
  - per layer and domain, 4 specialist experts (random, disjoint) at 2.5x;
  - pi proportional to that, scaled to sum 8, capped at 1 (a token counts an
    expert once);
  - the batch is 70% one domain and 30% the others; the leading domain changes
    every 40 steps, cross-fading over 10; each rank's mix is drawn around the
    step's (Dirichlet, concentration 50): data-parallel ranks read different
    documents.
"""
import argparse
import pathlib
import struct
import sys
import zlib

import numpy as np

SYNC = b"\xa7REC"


def frame(payload):
    head = struct.pack("<II", len(payload), zlib.crc32(payload))
    return SYNC + head + struct.pack("<I", zlib.crc32(head)) + payload


def text(s):
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def header(world, layers, experts):
    """Header frame: world, rank -1 (generated), no phases, layers without sizes
    (the replay models the layer its flags give)."""
    p = struct.pack("<Ii", world, -1) + struct.pack("<I", 0) + struct.pack("<I", len(layers))
    for name in layers:
        p += text(name) + struct.pack("<IIIBBI", experts, 0, 0, 0, 0, 2)
    return b"DMOETRC\n" + struct.pack("<I", 2) + frame(p)


def step_record(step, layer, counts):
    world, experts = counts.shape
    cells = counts.astype("<i8").tobytes()
    # kept = routed: dropless routing; no plan; no phase timings.
    p = struct.pack("<BqIII", 2, step, layer, world, experts) + cells + cells + struct.pack("<BI", 0, 0)
    return frame(p)


def capped(weights, k):
    """Inclusion probabilities proportional to weights, summing to k, none above 1."""
    pi = np.zeros(len(weights))
    free = np.ones(len(weights), dtype=bool)
    while True:
        pi[free] = weights[free] * (k - pi[~free].sum()) / weights[free].sum()
        over = free & (pi > 1)
        if not over.any():
            return pi
        pi[over] = 1
        free &= ~over


def topk_inclusion(weights, k, rng, tokens=200_000, chunk=10_000):
    """P(expert in a token's top-k) for k weighted draws without replacement (Gumbel top-k)."""
    hits = np.zeros(len(weights))
    logw = np.log(weights)
    for _ in range(tokens // chunk):
        keys = logw + rng.gumbel(size=(chunk, len(weights)))
        top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
        hits += np.bincount(top.ravel(), minlength=len(weights))
    return hits / tokens


def zipf_trace(path, s, args, rng):
    experts, k, drift_every, shift = 256, 8, 25, 3
    pi_by_rank = topk_inclusion(1.0 / np.arange(1, experts + 1) ** s, k, rng)  # by popularity rank
    order = rng.permutation(experts)  # the expert at each popularity rank, before drift
    imbalance = []
    with open(path, "wb") as f:
        f.write(header(args.ranks, ["moe0"], experts))
        for step in range(args.steps):
            pi = np.empty(experts)
            pi[np.roll(order, -shift * (step // drift_every))] = pi_by_rank
            counts = rng.binomial(args.tokens, np.broadcast_to(pi, (args.ranks, experts)))
            loads = counts.sum(0)
            imbalance.append(loads.max() / loads.mean())
            f.write(step_record(step, 0, counts))
    return np.mean(imbalance)


def olmoe_trace(path, args, rng):
    experts, k, domains, layers = 64, 8, 5, 2
    lead_every, fade = 40, 10
    pis = []  # [layer][domain] inclusion probabilities
    for _ in range(layers):
        generalist = rng.lognormal(0.0, 0.35, experts)
        special = rng.permutation(experts)[: 4 * domains].reshape(domains, 4)
        per_domain = []
        for d in range(domains):
            w = generalist.copy()
            w[special[d]] *= 2.5
            per_domain.append(capped(w, k))
        pis.append(np.array(per_domain))
    imbalance = []
    with open(path, "wb") as f:
        f.write(header(args.ranks, [f"moe{l}" for l in range(layers)], experts))
        for step in range(args.steps):
            # The leading domain, cross-fading into the next over the last `fade` steps of its turn.
            lead, into = divmod(step, lead_every)
            mix = np.full(domains, 0.3 / (domains - 1))
            t = max(0, into - (lead_every - fade)) / fade
            mix[lead % domains] += 0.7 * (1 - t) - 0.3 / (domains - 1) * (1 - t)
            mix[(lead + 1) % domains] += 0.7 * t - 0.3 / (domains - 1) * t
            ranks_mix = rng.dirichlet(50 * mix, size=args.ranks)  # [ranks, domains]
            for l in range(layers):
                pi = ranks_mix @ pis[l]  # convex mixes: sum 8, each <= 1
                counts = rng.binomial(args.tokens, pi)
                loads = counts.sum(0)
                imbalance.append(loads.max() / loads.mean())
                f.write(step_record(step, l, counts))
    return np.mean(imbalance)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--ranks", type=int, default=16, help="recorded ranks (default 16)")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per rank and step (default 8192)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if min(args.steps, args.ranks, args.tokens) < 1:
        ap.error("--steps, --ranks and --tokens must be >= 1")
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for s in (1.0, 1.2):
        path = out / f"zipf{s}.dmtrace"
        print(f"wrote {path}: mean max/mean expert load {zipf_trace(path, s, args, rng):.2f}")
    path = out / "olmoe-like.dmtrace"
    print(f"wrote {path}: mean max/mean expert load {olmoe_trace(path, args, rng):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
