"""dist_worker.py's placement and schedule scenarios: each policy's copies and the overlap schedule
against placement="none" and schedule="sequential", and the online cost-model calibration."""
import torch
import torch.distributed as dist

import dynamoe
from dist_common import FLOAT, GEMM, SUM, args, check, close_ulps, rank, report, sum_ulps, tokens_of, world


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
