"""dist_worker.py's equivalence scenarios: an expert-parallel layer (built-in experts, custom expert
modules, a compatibility adapter) against one process's layer holding every expert, same weights."""
import torch
import torch.distributed as dist

import dynamoe
import compat_cases  # shared weight copying; the compat scenario's cases
from dist_common import FLOAT, GEMM, args, check, close, close_ulps, rank, sum_ulps, tokens_of, world


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
