"""dist_worker.py's scenarios about saved state and recomputation: activation checkpointing, a
second backward (retain_graph), portable checkpoints across expert-parallel sizes and pickling,
and a torchrun restart."""
import os
import time

import torch
import torch.distributed as dist

import dynamoe
from dist_common import GEMM, SUM, args, check, close, close_ulps, rank, report, tokens_of, world


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
