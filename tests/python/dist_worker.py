"""One rank of a Python expert-parallel test, started by torchrun (test_distributed.py).

Writes {"ok": bool, "errors": [...], "error": message, "elapsed_s": s} to <out>/rank<r>.json
and exits 0 (torchrun tears every worker down when one exits non-zero, and the
test wants every rank's report).
"""
import argparse
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
p.add_argument("--stop_file", default="")
p.add_argument("--compat", default="")
p.add_argument("--cases", default="")
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


def close(a, b, what, tol=1e-10):
    diff = (a - b).abs().max().item() if a.numel() and a.shape == b.shape else 0.0
    check(a.shape == b.shape and diff <= tol, f"{what}: max diff {diff}")


def tokens_of(r, d):
    counts = [int(t) for t in args.tokens.split(",")]
    g = torch.Generator().manual_seed(100 + r)
    x = torch.randn(counts[r % len(counts)], d, generator=g, dtype=torch.float64)
    return x, torch.randn(x.shape, generator=g, dtype=torch.float64)


def equal():
    E, d, h = args.experts, 6, 10
    kw = dict(top_k=args.top_k, capacity_factor=args.capacity, min_capacity=1, gated=bool(args.gated), bias=True)
    torch.manual_seed(1234)
    ref = dynamoe.MoE(d, h, E, **kw).double()
    if args.ep_size:
        moe = dynamoe.MoE(d, h, E, ep_size=args.ep_size, **kw).double()
        ep_group = moe.group
    else:
        moe = dynamoe.MoE(d, h, E, group=dist.group.WORLD, **kw).double()
        ep_group = dist.group.WORLD
    with torch.no_grad():
        ref.expert_bias[E - 1] = -1e4  # an expert that never gets a token
        moe.expert_bias.copy_(ref.expert_bias)
    first, el = compat_cases.copy_weights(moe, ref)

    def loss(m, r):
        x, gy = tokens_of(r, d)
        y = m(x)
        return y, (y * gy).sum() + m.aux_loss.double()

    y, l = loss(moe, rank)
    l.backward()
    raw = {n: p.grad.clone() for n, p in moe.named_parameters()}
    y_ref, l_ref = loss(ref, rank)
    l_ref.backward()
    close(y, y_ref, "output")
    close(raw["gate.weight"], ref.gate.weight.grad, "gate gradient")
    if "gate.bias" in raw:
        close(raw["gate.bias"], ref.gate.bias.grad, "router bias gradient")
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
            close(raw[n], getattr(ref, n).grad[first:first + el], f"raw gradient of {n}")
    ref.zero_grad()
    for r in range(world):
        loss(ref, r)[1].backward()
    dynamoe.reduce_gradients(moe)
    for n, p in moe.named_parameters():
        want = dict(ref.named_parameters())[n].grad
        if dynamoe.is_expert_parameter(p):
            want = want[first:first + el]
        close(p.grad, want / world, f"reduced gradient of {n}")


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
    for policy in ("fastermoe", "adaptive", "eplb"):
        torch.manual_seed(1234)
        ref = dynamoe.MoE(d, h, E, top_k=2, bias=True, group=dist.group.WORLD, placement="none").double()
        moe = dynamoe.MoE(d, h, E, top_k=2, bias=True, group=dist.group.WORLD, placement=policy).double()
        with torch.no_grad():
            ref.expert_bias[1] = 1e4  # every token's first choice
            for (n, p), q in zip(moe.named_parameters(), ref.parameters()):
                p.copy_(q)
            moe.expert_bias.copy_(ref.expert_bias)
        check(f"placement={policy}" in repr(moe), f"repr names the policy: {moe!r}")
        for step in range(2):
            x, gy = tokens_of(rank + 10 * step, d)
            outs = []
            for m in (ref, moe):
                m.zero_grad()
                y = m(x)
                ((y * gy).sum() + m.aux_loss.double()).backward()
                outs.append(y)
            close(outs[1], outs[0], f"{policy} step {step}: output")
            for (n, p), q in zip(moe.named_parameters(), ref.parameters()):
                close(p.grad, q.grad, f"{policy} step {step}: gradient of {n}")
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


def schedule():
    """The overlap schedule from the environment (FastMoE's FMOE_FASTER_* names) against
    schedule="sequential", with and without copies, float64 and bfloat16, x needing a gradient."""
    E, d, h = args.experts, 6, 10
    for policy in ("none", "adaptive"):
        for dtype, tol in ((torch.float64, 1e-10), (torch.bfloat16, 5e-2)):
            torch.manual_seed(1234)
            ref = dynamoe.MoE(d, h, E, top_k=2, bias=True, group=dist.group.WORLD, placement=policy,
                              schedule="sequential").to(dtype)
            moe = dynamoe.MoE(d, h, E, top_k=2, bias=True, group=dist.group.WORLD, placement=policy).to(dtype)
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
                    xi = x.to(dtype).requires_grad_(True)
                    y = m(xi)
                    ((y * gy.to(dtype)).sum() + m.aux_loss).backward()
                    outs.append(y)
                    xs.append(xi)
                scale = 1.0 + outs[0].abs().max().item() if outs[0].numel() else 1.0
                close(outs[1].double(), outs[0].double(), f"{what} step {step}: output", tol * scale)
                close(xs[1].grad.double(), xs[0].grad.double(), f"{what} step {step}: gradient of x", tol * scale)
                for (n, p), q in zip(moe.named_parameters(), ref.parameters()):
                    gscale = 1.0 + q.grad.abs().max().item()
                    close(p.grad.double(), q.grad.double(), f"{what} step {step}: gradient of {n}", tol * gscale)
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
        close(a, b, "overlap's second backward equals sequential's", 1e-12 * (1 + b.abs().max().item()))


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
        close(m(x), y4, f"outputs after loading the ep_size={world} checkpoint at ep_size={ep}", 1e-12)
        if ep == 1 and rank == 0:
            torch.save(dynamoe.portable_state_dict(m), os.path.join(out, "ckpt_one.pt"))
    dist.barrier()
    m = build(world, 9)
    dynamoe.load_portable_state_dict(m, torch.load(os.path.join(out, "ckpt_one.pt")))
    close(m(x), y4, "outputs after loading the ep_size=1 checkpoint back at ep_size=world", 1e-12)
    shards = {}
    for r in range(world):
        shards.update(torch.load(os.path.join(out, f"shard{r}.pt")))
    m = build(world, 10)
    dynamoe.load_portable_state_dict(m, shards)
    close(m(x), y4, "outputs after loading the union of per-rank shards", 1e-12)
    try:  # one rank's shard alone lacks the other ranks' experts
        dynamoe.load_portable_state_dict(build(1, 11), torch.load(os.path.join(out, f"shard{rank}.pt")))
        check(False, "loading one shard at ep_size=1 did not fail")
    except KeyError as e:
        check("lacks" in str(e), f"shard error names what is missing: {e}")

    # Pickling: a deep copy shares the group; a pickle needs set_group().
    twin = copy.deepcopy(m4)
    check(twin._comm is m4._comm and twin.w1 is not m4.w1, "deepcopy shares the communicator, copies the weights")
    close(twin(x), y4, "deep copy's outputs", 1e-12)
    avg = torch.optim.swa_utils.AveragedModel(m4)
    avg.update_parameters(m4)
    close(avg(x), y4, "AveragedModel's outputs", 1e-12)
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
    close(loaded(x), y4, "unpickled layer's outputs after set_group", 1e-12)


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


def metrics():
    """Runs 3 training steps with DYNAMOE_METRICS_PORT set, reports the routing
    it did, then stays up (so Prometheus can scrape) until the stop file appears."""
    E, d, h = args.experts, 6, 10
    torch.manual_seed(1234)
    moe = dynamoe.MoE(d, h, E, top_k=args.top_k, group=dist.group.WORLD, name="prom")
    routed = [0] * E
    for step in range(3):
        x, gy = tokens_of(rank + 10 * step, d)
        moe(x.float()).backward(gy.float())
        for e, c in enumerate(moe.stats()["routed_counts"].tolist()):
            routed[e] += c
    report["routed"] = routed
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    deadline = time.time() + 120
    while not os.path.exists(args.stop_file) and time.time() < deadline:
        time.sleep(0.2)


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
    close(y, yr, "output")
    close(x.grad, xr.grad, "input gradient")
    close(raw["gate.weight"], ref.gate.weight.grad, "gate gradient")
    if "gate.bias" in raw:
        close(raw["gate.bias"], ref.gate.bias.grad, "router bias gradient")
    ref.zero_grad()
    for r in range(world):  # the experts' gradients come from every rank's tokens
        run(False, r)[2].backward()
    for n in ("w1", "w2", "b1", "b2"):
        if n in raw:
            close(raw[n], getattr(ref, n).grad[first:first + el], f"gradient of {n}")
    if args.compat.startswith("fastmoe"):  # FastMoE's wrapper: dense averaged, experts kept
        fastmoe.DistributedGroupedDataParallel(layer).allreduce_params()
        close(layer.moe.gate.weight.grad, ref.gate.weight.grad / world, "allreduce_params gate gradient")
        close(layer.moe.w1.grad, raw["w1"], "allreduce_params expert gradient")


dist.init_process_group("gloo")
try:
    if args.scenario == "equal":
        equal()
    elif args.scenario == "placement":
        placement()
    elif args.scenario == "schedule":
        schedule()
    elif args.scenario == "metrics":
        metrics()
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
    elif args.scenario == "config":
        dynamoe.communicator(dist.group.WORLD)
        check(False, "no error was raised")
except RuntimeError as e:
    report["error"] = str(e)
with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
    json.dump(report, f)
sys.stdout.flush()
os._exit(0)  # skip teardown: after a failure the process groups are unusable
