"""One rank of a Python expert-parallel test, started by torchrun (test_distributed.py).

Writes {"ok": bool, "errors": [...], "error": message, "elapsed_s": s} to <out>/rank<r>.json
and exits 0 (torchrun tears every worker down when one exits non-zero, and the
test wants every rank's report).
"""
import argparse
import collections
import datetime
import math
import json
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

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
args = p.parse_args()

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
if args.scenario == "config" and rank == 1:
    os.environ["DYNAMOE_PLACEMENT"] = "adaptive"  # read once, at dynamoe's first use
if args.scenario == "mismatch" and "ranks_per_node" in args.cases:
    os.environ["LOCAL_WORLD_SIZE"] = str(1 + rank)  # as two nodes of different sizes would report
import dynamoe  # noqa: E402
import compat_cases  # noqa: E402  (shared weight copying; the compat scenario's cases)

report = {"ok": True, "errors": []}


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


# The scenarios that take --device compute in float64 on the CPU; the CUDA path's fused router
# takes float32 and 16-bit data (float64 there is refused, naming the dtypes it takes).
FLOAT = torch.float64 if args.device == "cpu" else torch.float32


def tokens_of(r, d):
    counts = [int(t) for t in args.tokens.split(",")]
    g = torch.Generator().manual_seed(100 + r)
    x = torch.randn(counts[r % len(counts)], d, generator=g, dtype=torch.float64)
    return x, torch.randn(x.shape, generator=g, dtype=torch.float64)


def equal():
    E, d, h = args.experts, 6, 10
    kw = dict(top_k=args.top_k, capacity_factor=args.capacity, min_capacity=1, gated=bool(args.gated), bias=True)
    dev = torch.device(args.device)
    torch.manual_seed(1234)
    ref = dynamoe.MoE(d, h, E, **kw).to(dev, FLOAT)
    if args.ep_size:
        moe = dynamoe.MoE(d, h, E, ep_size=args.ep_size, **kw).to(dev, FLOAT)
        ep_group = moe.group
    else:
        moe = dynamoe.MoE(d, h, E, group=dist.group.WORLD, **kw).to(dev, FLOAT)
        ep_group = dist.group.WORLD
    with torch.no_grad():
        ref.expert_bias[E - 1] = -1e4  # an expert that never gets a token
        moe.expert_bias.copy_(ref.expert_bias)
    first, el = compat_cases.copy_weights(moe, ref)

    def loss(m, r):
        x, gy = (t.to(dev, FLOAT) for t in tokens_of(r, d))
        y = m(x)
        return y, (y * gy).sum() + m.aux_loss.double()

    y, l = loss(moe, rank)
    l.backward()
    raw = {n: p.grad.clone() for n, p in moe.named_parameters()}
    y_ref, l_ref = loss(ref, rank)
    l_ref.backward()
    close_ulps(y, y_ref, GEMM, "output")
    close_ulps(raw["gate.weight"], ref.gate.weight.grad, sum_ulps(y), "gate gradient")
    if "gate.bias" in raw:
        close_ulps(raw["gate.bias"], ref.gate.bias.grad, sum_ulps(y), "router bias gradient")
    members = [None] * dist.get_world_size(ep_group)
    dist.all_gather_object(members, rank, group=ep_group)
    counts = moe.stats()["counts"]
    check(list(counts.shape) == [len(members), E], f"count matrix shape {list(counts.shape)}")
    ref.zero_grad()
    for i, r in enumerate(members):
        loss(ref, r)[1].backward()
        check(torch.equal(counts[i], ref.stats()["counts"][0]), f"count matrix row {i}")
    for n in ("w1", "w2", "w3", "b1", "b2"):
        if n in raw:
            close_ulps(raw[n], getattr(ref, n).grad[first:first + el], sum_ulps(y), f"raw gradient of {n}")
    ref.zero_grad()
    for r in range(world):
        loss(ref, r)[1].backward()
    dynamoe.reduce_gradients(moe)
    for n, p in moe.named_parameters():
        want = dict(ref.named_parameters())[n].grad
        if dynamoe.is_expert_parameter(p):
            want = want[first:first + el]
        close_ulps(p.grad, want / world, sum_ulps(y), f"reduced gradient of {n}")


def custom():
    """Custom expert modules with expert parallelism from Python: each rank builds and holds its
    experts only (the factory gets global indices), and output, input and gate gradients and each
    local expert's gradients (summed over every rank's tokens) equal one process's layer holding
    every expert."""
    E, d = args.experts, 6

    def make(e):  # weights that depend on the global index alone
        g = torch.Generator().manual_seed(1000 + e)
        lin = torch.nn.Linear(d, d).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5)
            lin.bias.copy_(torch.randn(d, generator=g, dtype=torch.float64))
        return torch.nn.Sequential(lin, torch.nn.Tanh())

    kw = dict(top_k=args.top_k, capacity_factor=args.capacity, min_capacity=1, expert=make)
    torch.manual_seed(1234)
    ref = dynamoe.MoE(d, 8, E, **kw).double()
    moe = dynamoe.MoE(d, 8, E, group=dist.group.WORLD, **kw).double()
    moe.gate.weight.data.copy_(ref.gate.weight.data)
    first, el = moe.first_expert, moe.num_local_experts
    check((first, el, len(moe.experts)) == (rank * E // world, E // world, E // world),
          f"rank {rank} holds experts from {first}: {len(moe.experts)} modules, {el} expected")

    def loss(m, r):
        x, gy = tokens_of(r, d)
        x.requires_grad_(True)
        y = m(x)
        return x, y, (y * gy).sum() + m.aux_loss.double()

    x, y, l = loss(moe, rank)
    l.backward()
    xr, y_ref, l_ref = loss(ref, rank)
    l_ref.backward()
    close_ulps(y, y_ref, GEMM, "output")
    close_ulps(x.grad, xr.grad, sum_ulps(y), "input gradient")
    close_ulps(moe.gate.weight.grad, ref.gate.weight.grad, sum_ulps(y), "gate gradient")
    check(moe.stats()["counts"].shape == (world, E), f"count matrix {list(moe.stats()['counts'].shape)}")
    ref.zero_grad()
    for r in range(world):
        loss(ref, r)[2].backward()
    for k in range(el):
        for (n, p), want in zip(moe.experts[k].named_parameters(), ref.experts[first + k].parameters()):
            if want.grad is None:
                check(p.grad is None or not p.grad.any(), f"expert {first + k} {n}: a gradient without rows")
            else:
                close_ulps(p.grad, want.grad, sum_ulps(y), f"expert {first + k} gradient of {n}")


def die():
    moe = dynamoe.MoE(4, 8, 12, top_k=2, group=dist.group.WORLD, name="moe")
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(rank))
    y = moe(x)
    if rank == world - 1:
        y.register_hook(lambda g: os._exit(0))  # exits in the middle of backward
    t0 = time.monotonic()
    try:
        y.sum().backward()
        check(False, "no error was raised")
    except RuntimeError as e:
        report["error"] = str(e)
        report["elapsed_s"] = time.monotonic() - t0


def placement():
    """Each policy (placement=) against placement="none" with a hot expert 1."""
    E, d, h = args.experts, 6, 10
    dev = torch.device(args.device)
    for policy in ("fastermoe", "adaptive", "eplb"):
        torch.manual_seed(1234)
        ref = dynamoe.MoE(d, h, E, top_k=2, bias=True, group=dist.group.WORLD, placement="none").to(dev, FLOAT)
        moe = dynamoe.MoE(d, h, E, top_k=2, bias=True, group=dist.group.WORLD, placement=policy).to(dev, FLOAT)
        with torch.no_grad():
            ref.expert_bias[1] = 1e4  # every token's first choice
            for (n, p), q in zip(moe.named_parameters(), ref.parameters()):
                p.copy_(q)
            moe.expert_bias.copy_(ref.expert_bias)
        check(f"placement={policy}" in repr(moe), f"repr names the policy: {moe!r}")
        for step in range(2):
            x, gy = (t.to(dev, FLOAT) for t in tokens_of(rank + 10 * step, d))
            outs = []
            for m in (ref, moe):
                m.zero_grad()
                y = m(x)
                ((y * gy).sum() + m.aux_loss.double()).backward()
                outs.append(y)
            close_ulps(outs[1], outs[0], GEMM, f"{policy} step {step}: output")
            for (n, p), q in zip(moe.named_parameters(), ref.parameters()):
                close_ulps(p.grad, q.grad, sum_ulps(q), f"{policy} step {step}: gradient of {n}")
            st = moe.stats()
            check(len(st["replicas"]) == E, f"{policy}: replicas has one entry per expert")
            if step == 0:  # every rank has tokens, so expert 1's owner is the bottleneck
                check(st["replicas"][1] > 0, f"{policy}: hot expert copied: {st['replicas']}")
            check(st["predicted_step_seconds"] > 0, f"{policy}: predicted_step_seconds")
            check(all(st["replicas"][e] == world - 1 for e in st["shadowed"]), f"{policy}: shadowed on every rank")
            hashes = [None] * world
            dist.all_gather_object(hashes, st["plan_hash"])
            check(len(set(hashes)) == 1 and hashes[0] > 0, f"{policy}: plan hashes {hashes}")
            check(ref.stats()["replicas"] == [0] * E and ref.stats()["shadowed"] == [], "none made copies")


def calibrate():
    """DYNAMOE_CALIBRATE=online (set by the test): each rank trains on its own token count, so its
    phase times differ from the others'; reports per step the plan hash, this rank's phase times
    and stats()["cost_model"] (the parent compares the ranks)."""
    E, d, h = args.experts, 32, 64
    torch.manual_seed(1234)
    moe = dynamoe.MoE(d, h, E, top_k=2, group=dist.group.WORLD, placement="adaptive")
    with torch.no_grad():
        moe.expert_bias[1] = 2.0  # a hot expert, so that the policy has copies to weigh
    opt = torch.optim.SGD(moe.parameters(), lr=1e-3)
    n = [int(t) for t in args.tokens.split(",")][rank % len(args.tokens.split(","))]
    g = torch.Generator().manual_seed(7 + rank)
    steps = []
    for step in range(args.stages or 30):
        x = torch.randn(n + 7 * (step % 5), d, generator=g)
        opt.zero_grad()
        (moe(x).square().mean() + moe.aux_loss).backward()
        dynamoe.reduce_gradients(moe)
        opt.step()
        st = moe.stats()
        steps.append({"plan_hash": st["plan_hash"], "phase_seconds": st["phase_seconds"],
                      "cost_model": st["cost_model"]})
    report["steps"] = steps


def schedule():
    """The overlap schedule from the environment (FastMoE's FMOE_FASTER_* names) against
    schedule="sequential", with and without copies, float64 and bfloat16, x needing a gradient."""
    E, d, h = args.experts, 6, 10
    dev = torch.device(args.device)
    for policy in ("none", "adaptive"):
        for dtype in (FLOAT, torch.bfloat16):
            torch.manual_seed(1234)
            ref = dynamoe.MoE(d, h, E, top_k=2, bias=True, group=dist.group.WORLD, placement=policy,
                              schedule="sequential").to(dev, dtype)
            moe = dynamoe.MoE(d, h, E, top_k=2, bias=True, group=dist.group.WORLD, placement=policy).to(dev, dtype)
            with torch.no_grad():
                ref.expert_bias[1] = 1e4
                for p, q in zip(moe.parameters(), ref.parameters()):
                    p.copy_(q)
                moe.expert_bias.copy_(ref.expert_bias)
            what = f"{policy}/{dtype}"
            for step in range(2):
                x, gy = tokens_of(rank + 10 * step, d)
                outs, xs = [], []
                for m in (ref, moe):
                    m.zero_grad()
                    xi = x.to(dev, dtype).requires_grad_(True)
                    y = m(xi)
                    ((y * gy.to(dev, dtype)).sum() + m.aux_loss).backward()
                    outs.append(y)
                    xs.append(xi)
                close_ulps(outs[1], outs[0], GEMM, f"{what} step {step}: output")
                close_ulps(xs[1].grad, xs[0].grad, SUM[dtype], f"{what} step {step}: gradient of x")
                for (n, p), q in zip(moe.named_parameters(), ref.parameters()):
                    close_ulps(p.grad, q.grad, SUM[dtype], f"{what} step {step}: gradient of {n}")
                st = moe.stats()
                check(st["overlapped"] and not ref.stats()["overlapped"], f"{what}: stats overlapped")
                check(1 <= st["pipeline_stages"] <= 2 * (world - 1), f"{what}: stages {st['pipeline_stages']}")
                check(st["plan_hash"] == ref.stats()["plan_hash"], f"{what}: the schedule changed the plan")
    check("schedule=sequential" in repr(ref), f"repr names the schedule: {ref!r}")


def checkpoint():
    """Activation checkpointing, reentrant and not, against the same layer without it: every
    policy and both schedules, with the expert-bias update, RTS and capacity drops on. The
    recomputation must route as the forward did and apply the step's side effects once, so
    outputs, gradients, bias and step counter are bitwise equal."""
    from torch.utils.checkpoint import checkpoint as ckpt
    E, d, h = args.experts, 6, 10
    kw = dict(top_k=2, capacity_factor=1.0, min_capacity=1, bias=True, bias_update_rate=0.05, use_rts=True,
              group=dist.group.WORLD)
    for policy in ("none", "fastermoe", "adaptive", "eplb"):
        for sched in ("sequential", "overlap"):
            for reentrant in (True, False):
                what = f"{policy}/{sched}/{'reentrant' if reentrant else 'non-reentrant'}"
                torch.manual_seed(1234)
                ref = dynamoe.MoE(d, h, E, placement=policy, schedule=sched, **kw).double()
                moe = dynamoe.MoE(d, h, E, placement=policy, schedule=sched, **kw).double()
                with torch.no_grad():
                    ref.expert_bias[1] = 0.3  # a hot expert, so that policies copy and capacity drops
                    for p, q in zip(moe.parameters(), ref.parameters()):
                        p.copy_(q)
                    moe.expert_bias.copy_(ref.expert_bias)
                for step in range(3):
                    x, gy = tokens_of(rank + 10 * step, d)
                    res = []
                    for m, use in ((ref, False), (moe, True)):
                        m.zero_grad()
                        xi = x.clone().requires_grad_(True)

                        def fn(t, m=m):
                            return m(t), m.aux_loss

                        torch.manual_seed(50 + step)  # the forward draws from torch's generator
                        y, aux = ckpt(fn, xi, use_reentrant=reentrant) if use else fn(xi)
                        ((y * gy).sum() + aux).backward()
                        res.append((y.detach(), xi.grad, {n: p.grad.clone() for n, p in m.named_parameters()}))
                    close(res[1][0], res[0][0], f"{what} step {step}: output", 0.0)
                    close(res[1][1], res[0][1], f"{what} step {step}: input gradient", 0.0)
                    for n, g in res[0][2].items():
                        close(res[1][2][n], g, f"{what} step {step}: gradient of {n}", 0.0)
                    check(torch.equal(moe.expert_bias, ref.expert_bias), f"{what} step {step}: expert_bias "
                          f"{moe.expert_bias.tolist()} vs {ref.expert_bias.tolist()}")
                    check(moe.step == ref.step == step + 1, f"{what} step {step}: step {moe.step} vs {ref.step}")
                    check(torch.equal(moe.stats()["counts"], ref.stats()["counts"]), f"{what} step {step}: counts")
                    check(moe.stats()["plan_hash"] == ref.stats()["plan_hash"], f"{what} step {step}: plan")
                    report.setdefault("dropped", {}).setdefault(what, 0)
                    report["dropped"][what] += moe.stats()["dropped"]
                    report.setdefault("copied", {}).setdefault(what, 0)
                    report["copied"][what] += sum(moe.stats()["replicas"])


def retain():
    """A second backward through the same graph (retain_graph=True) gives the sequential
    schedule's gradients again, bitwise, for every parameter and the input."""
    E, d, h = args.experts, 6, 10
    torch.manual_seed(1234)
    models = {s: dynamoe.MoE(d, h, E, top_k=2, bias=True, gated=True, group=dist.group.WORLD, schedule=s).double()
              for s in ("sequential", "overlap")}
    with torch.no_grad():
        for p, q in zip(models["overlap"].parameters(), models["sequential"].parameters()):
            p.copy_(q)
    x, gy = tokens_of(rank, d)
    grads = {}
    for s, m in models.items():
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        firsts = []
        for _ in range(2):
            m.zero_grad()
            xi.grad = None
            (y * gy).sum().backward(retain_graph=True)
            firsts.append([xi.grad.clone()] + [p.grad.clone() for p in m.parameters()])
        for a, b in zip(firsts[0], firsts[1]):
            close(b, a, f"{s}: second backward equals the first", 0.0)
        grads[s] = firsts[1]
    for a, b in zip(grads["overlap"], grads["sequential"]):  # chunked sums: the reduction order differs
        close_ulps(a, b, SUM[b.dtype], "overlap's second backward equals sequential's")


def portable():
    """A portable checkpoint saved at ep_size=world (gathered, and as per-rank shards)
    loads at ep_size world/2 and 1 and back, each giving the first model's outputs;
    hot-expert copies never enter it. Then deepcopy, AveragedModel and torch.save of
    the expert-parallel model."""
    import copy
    import io
    E, d, h = args.experts, 6, 10
    x, _ = tokens_of(rank, d)
    out = args.out

    def build(ep, seed):
        torch.manual_seed(seed)  # a different init each time: loading must overwrite it all
        return dynamoe.MoE(d, h, E, top_k=2, gated=True, bias=True, ep_size=ep, placement="fastermoe").double()

    m4 = build(world, 1)
    y4 = m4(x)
    report["copied"] = len(m4.stats()["shadowed"]) + sum(m4.stats()["replicas"])
    sd = dynamoe.portable_state_dict(m4)
    expected = {"gate.weight", "expert_bias"} | {f"experts.{e}.{t}" for e in range(E)
                                                 for t in ("w1", "w2", "w3", "b1", "b2")}
    check(set(sd) == expected, f"portable keys: extra {sorted(set(sd) - expected)}, "
                               f"missing {sorted(expected - set(sd))}")
    check(tuple(sd["experts.0.w1"].shape) == (d, h), f"expert 0's w1 is {tuple(sd['experts.0.w1'].shape)}")
    if rank == 0:
        torch.save(sd, os.path.join(out, "ckpt_full.pt"))
    torch.save(dynamoe.portable_state_dict(m4, gather=False), os.path.join(out, f"shard{rank}.pt"))
    dist.barrier()
    for ep in (world // 2, 1):
        m = build(ep, 2 + ep)
        dynamoe.load_portable_state_dict(m, torch.load(os.path.join(out, "ckpt_full.pt")))
        close_ulps(m(x), y4, GEMM, f"outputs after loading the ep_size={world} checkpoint at ep_size={ep}")
        if ep == 1 and rank == 0:
            torch.save(dynamoe.portable_state_dict(m), os.path.join(out, "ckpt_one.pt"))
    dist.barrier()
    m = build(world, 9)
    dynamoe.load_portable_state_dict(m, torch.load(os.path.join(out, "ckpt_one.pt")))
    close(m(x), y4, "outputs after loading the ep_size=1 checkpoint back at ep_size=world", 0.0)
    shards = {}
    for r in range(world):
        shards.update(torch.load(os.path.join(out, f"shard{r}.pt")))
    m = build(world, 10)
    dynamoe.load_portable_state_dict(m, shards)
    close(m(x), y4, "outputs after loading the union of per-rank shards", 0.0)
    try:  # one rank's shard alone lacks the other ranks' experts
        dynamoe.load_portable_state_dict(build(1, 11), torch.load(os.path.join(out, f"shard{rank}.pt")))
        check(False, "loading one shard at ep_size=1 did not fail")
    except KeyError as e:
        check("lacks" in str(e), f"shard error names what is missing: {e}")

    # Pickling: a deep copy shares the group; a pickle needs set_group().
    twin = copy.deepcopy(m4)
    check(twin._comm is m4._comm and twin.w1 is not m4.w1, "deepcopy shares the communicator, copies the weights")
    close(twin(x), y4, "deep copy's outputs", 0.0)
    avg = torch.optim.swa_utils.AveragedModel(m4)
    avg.update_parameters(m4)
    close(avg(x), y4, "AveragedModel's outputs", 0.0)
    buf = io.BytesIO()
    torch.save(m4, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False) if "weights_only" in torch.load.__code__.co_varnames else \
        torch.load(buf)
    try:
        loaded(x)
        check(False, "an unpickled expert-parallel layer ran without its group")
    except RuntimeError as e:
        check("set_group" in str(e), f"unpickled layer's error names set_group: {e}")
    loaded.set_group(m4.group)
    close(loaded(x), y4, "unpickled layer's outputs after set_group", 0.0)


def restart():
    """torchrun --max-restarts=1: the first incarnation builds its communicator and
    runs a step, then rank 1 fails; the second, on the agent's surviving store,
    must build its communicator and train (not read the first one's keys)."""
    incarnation = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    report["incarnation"] = incarnation
    moe = dynamoe.MoE(6, 10, 6, top_k=2, group=dist.group.WORLD, name="moe").double()
    x, gy = tokens_of(rank, 6)
    (moe(x) * gy).sum().backward()
    if incarnation == 0:
        if rank == 1:
            os._exit(1)  # torchrun restarts every worker
        time.sleep(60)  # torchrun stops this incarnation
    dist.barrier()
    x2 = x.clone().requires_grad_()
    (moe(x2) * gy).sum().backward()
    check(x2.grad is not None and torch.isfinite(x2.grad).all().item(), "the second incarnation trained")


MISMATCHES = {
    # case: (what rank 1 does differently, the difference every rank must name)
    "dtype": ("ranks disagree on dtype: rank 0 (world rank 0) has Double, rank 1 (world rank 1) has Float"),
    "d_hidden": "ranks disagree on d_hidden: rank 0 (world rank 0) has 10, rank 1 (world rank 1) has 12",
    "gated": "ranks disagree on gated: rank 0 (world rank 0) has false, rank 1 (world rank 1) has true",
    "bias": "ranks disagree on bias: rank 0 (world rank 0) has false, rank 1 (world rank 1) has true",
    "placement": "ranks disagree on placement: rank 0 (world rank 0) has none, rank 1 (world rank 1) has adaptive",
    "schedule": "ranks disagree on schedule: rank 0 (world rank 0) has sequential, rank 1 (world rank 1) has overlap",
    "group_size": "ranks disagree on group_size: rank 0 (world rank 0) has 4, rank 1 (world rank 1) has 1",
    "overlap_degree": "ranks disagree on overlap_degree: rank 0 (world rank 0) has 1, rank 1 (world rank 1) has 3",
    "eval": "ranks disagree on training mode: rank 0 (world rank 0) has training, rank 1 (world rank 1) has eval",
    "no_grad": "ranks disagree on input requires_grad: rank 0 (world rank 0) has true, rank 1 (world rank 1) has false",
    "ranks_per_node": "ranks disagree on ranks per node",
}


def mismatch():
    """Each case: rank 1 runs a layer differently; every rank must raise naming the difference,
    before any token moves. The cases run one after another on the same group (a named
    mismatch leaves the group usable)."""
    d = 6
    for case in args.cases.split(","):
        odd = rank == 1
        kw = dict(top_k=2, group=dist.group.WORLD, name=f"m_{case}")
        if case == "d_hidden" and odd:
            kw["d_hidden"] = 12
        if case == "gated":
            kw["gated"] = odd
        if case == "bias":
            kw["bias"] = odd
        if case == "placement":
            kw["placement"] = "adaptive" if odd else "none"
        if case == "schedule":
            kw["schedule"] = "overlap" if odd else "sequential"
        if case == "group_size":
            kw.update(schedule="overlap", group_size=1 if odd else 4)
        if case == "overlap_degree":
            kw.update(schedule="overlap", overlap_degree=3 if odd else 1)
        m = dynamoe.MoE(d, kw.pop("d_hidden", 10), 6, **kw).double()
        x = torch.randn(5, d, dtype=torch.float64, requires_grad=True)
        if case == "dtype" and odd:
            m, x = m.float(), x.float().detach().requires_grad_(True)
        if case == "eval" and odd:
            m.eval()  # an extra evaluation forward on one rank
        try:
            if case == "no_grad" and odd:
                with torch.no_grad():
                    m(x)
            else:
                m(x).sum().backward()
            check(False, f"{case}: no error was raised")
        except RuntimeError as e:
            check(MISMATCHES[case] in str(e), f"{case}: {e}")
            check(f"layer 'm_{case}'" in str(e), f"{case}: the layer is named: {e}")


def compat():
    """A compatibility adapter (test_compat.py) expert-parallel over the world
    against a one-process dynamoe.MoE holding every expert, same weights."""
    from dynamoe.compat import fastmoe
    torch.manual_seed(7)
    layer, ref = compat_cases.build(args.compat, world)
    first, el = compat_cases.copy_weights(compat_cases.inner(layer), ref)
    check(compat_cases.inner(layer).group is not None, "the adapter is expert-parallel")

    def run(adapter, r):
        x, gy = tokens_of(r, compat_cases.D)
        x = x.reshape(1, -1, compat_cases.D).requires_grad_()  # [batch, seq, d_model]
        y, aux = compat_cases.output_of(layer, x) if adapter else (ref(x), ref.aux_loss)
        return x, y, (y * gy.reshape(y.shape)).sum() + aux.double()

    x, y, loss = run(True, rank)
    loss.backward()
    raw = {n: p.grad.clone() for n, p in compat_cases.inner(layer).named_parameters()}
    xr, yr, loss_ref = run(False, rank)
    loss_ref.backward()
    close_ulps(y, yr, GEMM, "output")
    close_ulps(x.grad, xr.grad, GEMM, "input gradient")
    close_ulps(raw["gate.weight"], ref.gate.weight.grad, sum_ulps(y), "gate gradient")
    if "gate.bias" in raw:
        close_ulps(raw["gate.bias"], ref.gate.bias.grad, sum_ulps(y), "router bias gradient")
    ref.zero_grad()
    for r in range(world):  # the experts' gradients come from every rank's tokens
        run(False, r)[2].backward()
    for n in ("w1", "w2", "b1", "b2"):
        if n in raw:
            close_ulps(raw[n], getattr(ref, n).grad[first:first + el], sum_ulps(y), f"gradient of {n}")
    if args.compat.startswith("fastmoe"):  # FastMoE's wrapper: dense averaged, experts kept
        fastmoe.DistributedGroupedDataParallel(layer).allreduce_params()
        close_ulps(layer.moe.gate.weight.grad, ref.gate.weight.grad / world, sum_ulps(y),
                   "allreduce_params gate gradient")
        # One holder per expert here (several: scenario dgdp): the sum over one rank, exact.
        close(layer.moe.w1.grad, raw["w1"], "allreduce_params expert gradient", 0.0)


def dgdp():
    """FastMoE's DistributedGroupedDataParallel with two holders per expert (FMoE world_size 2 of 4
    ranks): allreduce_params must average each expert's gradient over the ranks holding it and
    every other gradient over the world, against averages computed here from all raw gradients."""
    from dynamoe.compat import fastmoe
    ep_group = dynamoe.expert_parallel_groups(world // 2)[0]
    torch.manual_seed(7)
    layer = fastmoe.FMoETransformerMLP(num_expert=2, d_model=6, d_hidden=10, world_size=world // 2,
                                       moe_group=ep_group).double()
    model = fastmoe.DistributedGroupedDataParallel(layer)
    x, gy = tokens_of(rank, 6)
    y = model(x.reshape(1, -1, 6))
    (y * gy.reshape(y.shape)).sum().backward()
    params = dict(layer.named_parameters())
    gathered = {}
    for n, p in params.items():
        gathered[n] = [torch.empty_like(p.grad) for _ in range(world)]
        dist.all_gather(gathered[n], p.grad)
    firsts = [None] * world
    dist.all_gather_object(firsts, layer.moe.first_expert)
    holders = [r for r in range(world) if firsts[r] == layer.moe.first_expert]
    check(len(holders) == 2, f"two holders of experts {layer.moe.first_expert}+: {holders}")
    model.allreduce_params()
    n_expert = 0
    for n, p in params.items():
        if dynamoe.is_expert_parameter(p):
            n_expert += 1
            a, b = (gathered[n][r] for r in holders)
            check(not torch.equal(a, b), f"{n}: the holders' gradients differ (their tokens do)")
            # (a + b) / 2 in any order is one rounding of the same sum: exact.
            close(p.grad, (a + b) / 2, f"allreduce_params: expert gradient {n} (mean over holders {holders})", 0.0)
        else:
            want = sum(gathered[n][r] for r in range(world)) / world
            close_ulps(p.grad, want, SUM[p.dtype], f"allreduce_params: dense gradient {n} (mean over the world)")
    check(n_expert >= 4, f"expert parameters found: {n_expert}")


def bias_claim():
    """bias_update_rate > 0 from Python, expert-parallel with capacity drops: after each step
    expert_bias == bias + rate * sign(mean(load) - load), load being the world's routed (before
    capacity) assignments computed here from every rank's tokens with a plain top-k of
    softmax(x W^T) + bias; the same on every rank."""
    E, d, h, k, rate = 6, 6, 10, 2, 0.05
    torch.manual_seed(1234)
    moe = dynamoe.MoE(d, h, E, top_k=k, capacity_factor=1.0, min_capacity=1, bias_update_rate=rate,
                      group=dist.group.WORLD, name="bias").double()
    kept_would_differ = local_would_differ = False
    for step in range(3):
        bias = moe.expert_bias.clone()
        loads = []
        for r in range(world):
            xr, _ = tokens_of(r + 10 * step, d)
            key = torch.softmax(xr @ moe.gate.weight.detach().T, -1) + bias
            loads.append(torch.bincount(key.topk(k, -1).indices.flatten(), minlength=E).double())
        load = sum(loads)
        x, gy = tokens_of(rank + 10 * step, d)
        y = moe(x)
        ((y * gy).sum() + moe.aux_loss).backward()
        want = bias + torch.sign(load.mean() - load) * rate
        check(torch.equal(moe.expert_bias, want), f"step {step}: expert_bias {moe.expert_bias.tolist()}, "
                                                  f"expected {want.tolist()} from routed load {load.tolist()}")
        kept = moe.stats()["counts"].sum(0).double()
        kept_would_differ |= not torch.equal(bias + torch.sign(kept.mean() - kept) * rate, want)
        local_would_differ |= not torch.equal(bias + torch.sign(loads[rank].mean() - loads[rank]) * rate, want)
        biases = [None] * world
        dist.all_gather_object(biases, moe.expert_bias.tolist())
        check(all(b == biases[0] for b in biases), f"step {step}: expert_bias differs between ranks: {biases}")
    # The checks above tell the routed from the kept counts, and the world's from this rank's.
    check(kept_would_differ, "capacity drops made an update from the kept counts differ from the routed one's")
    check(local_would_differ, "an update from this rank's own counts would differ from the world's")


def tutel_claim():
    """Tutel's a2a_ffn_overlap_degree=2 runs the overlap schedule with 2 chunks and gives
    degree 1's results (same weights)."""
    from dynamoe.compat import tutel
    d = compat_cases.D

    def build(degree):
        torch.manual_seed(7)
        return tutel.moe_layer(gate_type={"type": "top", "k": 2, "capacity_factor": 0.0}, model_dim=d,
                               experts={"type": "ffn", "count_per_node": 2, "hidden_size_per_expert": 10,
                                        "activation_fn": lambda t: torch.nn.functional.relu(t)},
                               a2a_ffn_overlap_degree=degree).double()

    res = []
    for layer in (build(1), build(2)):
        if res:
            layer.load_state_dict(res[0][0].state_dict())
        x, gy = tokens_of(rank, d)
        x = x.reshape(1, -1, d).requires_grad_()
        y = layer(x)
        ((y * gy.reshape(y.shape)).sum() + y.l_aux).backward()
        res.append((layer, y.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()}))
    (one, y1, gx1, g1), (two, y2, gx2, g2) = res
    close_ulps(y2, y1, GEMM, "tutel degree 2: output")
    close_ulps(gx2, gx1, SUM[gx1.dtype], "tutel degree 2: input gradient")
    for n, g in g1.items():
        close_ulps(g2[n], g, SUM[g.dtype], f"tutel degree 2: gradient of {n}")
    s1, s2 = one.moe.stats(), two.moe.stats()
    check(not s1["overlapped"] and s2["overlapped"], f"overlapped: degree 1 {s1['overlapped']}, 2 {s2['overlapped']}")
    # World 2: one peer group, cut into 2 chunks, each with rows on both ranks.
    check(s2["pipeline_stages"] == 2, f"degree 2 ran {s2['pipeline_stages']} stages")


def plan_claim():
    """DYNAMOE_CHECK_PLAN=1 names the ranks whose plans differ. adaptive with
    DYNAMOE_PLACEMENT_HYSTERESIS=1 keeps its first plan; rank 1 then replaces its layer by a deep
    copy (same weights and step, but the policy's history starts afresh) and expert 0 turns hot too:
    rank 0 keeps copying expert 1 only (still better than no copies), rank 1 plans anew."""
    import copy
    E, d, h = 4, 6, 10
    torch.manual_seed(1234)
    moe = dynamoe.MoE(d, h, E, top_k=2, group=dist.group.WORLD, placement="adaptive", name="plan").double()
    with torch.no_grad():
        moe.expert_bias[1] = 1e4  # rank 0's expert 1 is every token's first choice
    x, gy = tokens_of(rank, d)
    (moe(x) * gy).sum().backward()  # the same plan everywhere: no error
    check(moe.stats()["replicas"][1] > 0, f"step 0 copied the hot expert: {moe.stats()['replicas']}")
    if rank == 1:
        moe = copy.deepcopy(moe)
    with torch.no_grad():
        moe.expert_bias[0] = 1e4  # rank 0's experts 0 and 1 are every token's two choices
    msg = ""
    try:
        (moe(x) * gy).sum().backward()
        check(False, "differing plans raised no error")
    except RuntimeError as e:
        msg = str(e)
    hashes = [None] * world
    dist.all_gather_object(hashes, moe._state.plan_hash() & (2 ** 64 - 1))
    other = 1 - rank
    check(hashes[0] != hashes[1], f"the plans really differ: {hashes}")
    for want in ("layer 'plan' phase 'policy' step 1: ranks computed different placement plans",
                 f"rank {rank} has {hashes[rank]:016x}", f"rank {other} (world rank {other}) has {hashes[other]:016x}"):
        check(want in msg, f"{want!r} not in: {msg}")


def auto_claim():
    """overlap_degree=0: the cost model picks the chunk count (stats' pipeline_stages; world 2 is one
    peer group, 64 tokens fill every chunk); the results stay the sequential schedule's."""
    E, d, h = 4, 6, 10
    torch.manual_seed(1234)
    kw = dict(top_k=2, bias=True, group=dist.group.WORLD)
    ref = dynamoe.MoE(d, h, E, schedule="sequential", name="auto_seq", **kw).double()
    moe = dynamoe.MoE(d, h, E, schedule="overlap", group_size=1, overlap_degree=0, name="auto", **kw).double()
    with torch.no_grad():
        for p, q in zip(moe.parameters(), ref.parameters()):
            p.copy_(q)
    g = torch.Generator().manual_seed(300 + rank)
    x, gy = torch.randn(64, d, generator=g, dtype=torch.float64), torch.randn(64, d, generator=g, dtype=torch.float64)
    outs = []
    for m in (ref, moe):
        xi = x.clone().requires_grad_()
        y = m(xi)
        (y * gy).sum().backward()
        outs.append((y.detach(), xi.grad, [p.grad for p in m.parameters()]))
    close_ulps(outs[1][0], outs[0][0], GEMM, "degree 0: output")
    close_ulps(outs[1][1], outs[0][1], SUM[x.dtype], "degree 0: input gradient")
    for a, b in zip(outs[1][2], outs[0][2]):
        close_ulps(a, b, SUM[b.dtype], "degree 0: parameter gradient")
    st = moe.stats()
    check(st["overlapped"] and st["pipeline_stages"] == args.stages,
          f"overlapped {st['overlapped']}, {st['pipeline_stages']} stages, expected {args.stages}")


def tcp_sockets():
    """This process's TCP sockets (IPv4 and IPv6): (local port, remote port, state) from /proc."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    states = {"01": "ESTABLISHED", "0A": "LISTEN"}
    rows = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):  # IPv4 and IPv6 sockets
        with open(table) as f:
            rows += [line.split() for line in f.read().splitlines()[1:]]
    return [(int(r[1].split(":")[1], 16), int(r[2].split(":")[1], 16), states.get(r[3], r[3]))
            for r in rows if r[9] in inodes]


def own_connections():
    """dynamoe runs its collectives on the caller's group: building layers on two groups and
    training a step opens no connection of its own (dynamoe's own Gloo group would open one per
    peer), only clients of the job's store at MASTER_PORT for its heartbeats."""
    store = int(os.environ["MASTER_PORT"])
    sub = dist.new_group([0, 1])  # the caller's groups connect before the count
    before = collections.Counter(tcp_sockets())
    for i, group in enumerate((dist.group.WORLD, sub)):
        moe = dynamoe.MoE(6, 10, 4, group=group, name=f"own{i}").double()
        x, gy = tokens_of(rank, 6)
        (moe(x) * gy).sum().backward()
    opened = list((collections.Counter(tcp_sockets()) - before).elements())
    check(all(s[1] == store for s in opened if s[2] != "LISTEN"), f"connections besides the store's: {opened}")
    check(any(s[1] == store for s in opened), f"no client of the store at {store}: {opened}")


CLAIMS = {"dgdp": dgdp, "bias": bias_claim, "tutel": tutel_claim, "plan": plan_claim, "auto": auto_claim}

if args.scenario == "restart":
    # torch 2.15's own env:// init reads the first incarnation's Gloo addresses
    # from the agent's store after a restart (a bare torchrun --max-restarts=1
    # job fails in connectFullMesh), so torch's keys get a per-incarnation
    # prefix here; dynamoe's keys stay on the bare agent store, as in any job.
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, False,
                          timeout=datetime.timedelta(seconds=60))
    incarnation = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group("gloo", store=dist.PrefixStore(f"torch/{incarnation}", agent), rank=rank,
                            world_size=world)
else:
    dist.init_process_group("gloo")
try:
    if args.scenario == "equal":
        equal()
    elif args.scenario == "placement":
        placement()
    elif args.scenario == "schedule":
        schedule()
    elif args.scenario == "calibrate":
        calibrate()
    elif args.scenario == "compat":
        compat()
    elif args.scenario == "checkpoint":
        checkpoint()
    elif args.scenario == "retain":
        retain()
    elif args.scenario == "portable":
        portable()
    elif args.scenario == "restart":
        restart()
    elif args.scenario == "mismatch":
        mismatch()
    elif args.scenario == "die":
        die()
    elif args.scenario == "custom":
        custom()
    elif args.scenario == "claims":  # several checks in one launch, each reporting on its own
        for case in args.cases.split(","):
            CLAIMS[case]()
    elif args.scenario == "own_connections":
        own_connections()
    elif args.scenario == "config":
        dynamoe.communicator(dist.group.WORLD)
        check(False, "no error was raised")
except RuntimeError as e:
    report["error"] = str(e)
with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
    json.dump(report, f)
sys.stdout.flush()
os._exit(0)  # skip teardown: after a failure the process groups are unusable
