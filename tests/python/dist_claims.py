"""dist_worker.py's claims scenario: README claims, each checked on its own and several per launch
(--cases): FastMoE's DistributedGroupedDataParallel, the expert-bias update, Tutel's overlap
degree, the plan check and the cost model's chunk count."""
import torch
import torch.distributed as dist

import dynamoe
import compat_cases  # the adapters' shared sizes
from dist_common import GEMM, SUM, args, check, close, close_ulps, rank, tokens_of, world


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


CLAIMS = {"dgdp": dgdp, "bias": bias_claim, "tutel": tutel_claim, "plan": plan_claim, "auto": auto_claim}
