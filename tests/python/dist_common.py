"""What every scenario module of dist_worker.py shares: the command line, this rank's report,
the comparisons that fill it and their bounds, and the test tokens.

setup() parses the arguments and sets rank, world and FLOAT; the scenario modules import those
names, so dist_worker.py imports them after it (they also import dynamoe, which must come after
its environment is set). Importing this module runs nothing.
"""
import argparse
import math
import os

import torch

args = argparse.Namespace()  # filled in place by setup(), so an early `from dist_common import args` sees it
report = {"ok": True, "errors": []}


def setup():
    """Parses the worker's command line into args; sets rank and world (torchrun's) and FLOAT."""
    global rank, world, FLOAT
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", default="equal")
    p.add_argument("--out", required=True)
    p.add_argument("--experts", type=int, default=12)
    p.add_argument("--top_k", type=int, default=2)
    p.add_argument("--capacity", type=float, default=0.0)
    p.add_argument("--ep_size", type=int, default=0)
    p.add_argument("--gated", type=int, default=0)
    p.add_argument("--tokens", default="5,0,17,9")
    p.add_argument("--compat", default="")
    p.add_argument("--cases", default="")
    p.add_argument("--stages", type=int, default=0)
    p.add_argument("--device", default="cpu")  # equal, placement, schedule: "cuda" runs every rank's layer on the one GPU (Gloo group)
    p.parse_args(namespace=args)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # The scenarios that take --device compute in float64 on the CPU; the CUDA path's fused router
    # takes float32 and 16-bit data (float64 there is refused, naming the dtypes it takes).
    FLOAT = torch.float64 if args.device == "cpu" else torch.float32


def __getattr__(name):  # rank, world or FLOAT imported before setup(): say so
    if name in ("rank", "world", "FLOAT"):
        raise ImportError(f"dist_common.{name} is set by setup(), which must run before the scenario modules "
                          "are imported")
    raise AttributeError(f"module 'dist_common' has no attribute {name!r}")


def check(cond, what):
    if not cond:
        report["ok"] = False
        report["errors"].append(what)


def close(a, b, what, tol):
    diff = (a - b).abs().max().item() if a.numel() and a.shape == b.shape else 0.0
    check(a.shape == b.shape and diff <= tol, f"{what}: max diff {diff} > {tol}")


def ulp(t, dtype):
    """One unit in the last place, in dtype, of t's largest magnitude (0 for an all-zero t)."""
    m = t.abs().max().item() if t.numel() else 0.0
    return torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(m)) if m else 0.0


def close_ulps(a, b, ulps, what):
    """|a - b| <= `ulps` units in the last place (of a's dtype) of the reference b's largest magnitude;
    reports the difference in those units under report["ulps"] (the figures the bounds below cite)."""
    u = ulp(b.double(), a.dtype)
    diff = (a.double() - b.double()).abs().max().item() if a.numel() and a.shape == b.shape else 0.0
    report.setdefault("ulps", {})[what] = diff / u if u else diff
    check(a.shape == b.shape and diff <= ulps * u, f"{what}: max diff {diff} = {diff / u if u else diff} ulps "
                                                   f"> {ulps}")


# Bounds in ulps of the reference's largest magnitude, where the arithmetic is not identical.
# GEMM: the experts run on another batch of rows (another rank, pipeline chunk or expert-parallel
# size), so BLAS may block the dot products differently; measured <= 1 ulp in fp64 with the even
# split, 1.25 with load-aware quotas (fastermoe, world 4: one source's rows cut into other
# batches), 0 in bf16.
GEMM = 2
# SUM: gradients summed over tokens, chunks, copies or ranks in another order; measured <= 2.5
# ulps in fp64 (placement copies), 5 in fp64 with 16 overlap chunks on torch 2.15 (its GEMM blocks
# by batch size too), and 2 ulps in bf16 (overlap chunks: per-chunk bf16 products).
SUM = {torch.float64: 8, torch.float32: 4, torch.bfloat16: 2}


def sum_ulps(t):
    return SUM[t.dtype]


def tokens_of(r, d):
    counts = [int(t) for t in args.tokens.split(",")]
    g = torch.Generator().manual_seed(100 + r)
    x = torch.randn(counts[r % len(counts)], d, generator=g, dtype=torch.float64)
    return x, torch.randn(x.shape, generator=g, dtype=torch.float64)
