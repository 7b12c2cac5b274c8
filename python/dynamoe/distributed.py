"""Expert parallelism over torch.distributed groups.

dynamoe.MoE(..., group=pg) spreads the experts over the ranks of ``pg``
(rank r holds experts [r*E_local, (r+1)*E_local)); ``ep_size=k`` builds the
groups itself, DeepSpeed-style (consecutive ranks form an EP group).

How the C++ runtime reaches the group: it does not take the Python
ProcessGroup object (passing it to C++ needs ``ProcessGroup.boxed()``, which
torch 1.13 lacks, or pybind internals that differ between versions). Instead
the group's rank 0 hosts a small ``torch.distributed.TCPStore``, its address
is broadcast over ``pg`` once, and every member builds a dynamoe communicator
(Gloo, or NCCL on GPU builds) from that store, its rank and the group's
world ranks. Only public, stable API is used, so it works on torch 1.13 and
2.x alike; the cost is one extra connection set per group, made once and
shared by every layer on that group. Gradients are reduced with the user's
own torch.distributed groups (``reduce_gradients``).
"""
import datetime
import socket

import torch
import torch.distributed as dist

from ._ops import ops

_COMMUNICATORS = {}   # group -> (communicator, store kept alive on rank 0)
_EP_GROUPS = {}       # ep_size -> (this rank's EP group, its expert-DP group)
_EXPERT_DP = {}       # EP group -> expert-DP group


def _advertised_host():
    configured = ops().config_get("DYNAMOE_COMM_ADDR")
    if configured:
        return configured
    import os
    master = os.environ.get("MASTER_ADDR")
    if master:
        # The local address on the route to the master (a UDP connect sends nothing).
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((master, int(os.environ.get("MASTER_PORT", "29500"))))
                return s.getsockname()[0]
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _group_ranks(group):
    ranks = [None] * dist.get_world_size(group)
    dist.all_gather_object(ranks, dist.get_rank(), group=group)
    return ranks


def communicator(group=None, backend="gloo"):
    """The dynamoe communicator of a torch.distributed group (created once per group).

    Every member must call it at the same point (it runs collectives on ``group``).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("dynamoe: group= needs torch.distributed.init_process_group() first")
    group = dist.group.WORLD if group is None else group
    if group in _COMMUNICATORS:
        return _COMMUNICATORS[group][0]
    ranks = _group_ranks(group)
    rank = dist.get_rank(group)
    timeout = float(ops().config_get("DYNAMOE_TIMEOUT_S"))
    store, address = None, [None, None]
    if rank == 0:
        host = _advertised_host()
        store = dist.TCPStore(host, 0, len(ranks), True, datetime.timedelta(seconds=timeout),
                              wait_for_workers=False)
        address = [host, store.port]
    dist.broadcast_object_list(address, src=ranks[0], group=group)
    name = "g" + "-".join(str(r) for r in ranks) if len(ranks) <= 8 else f"g{ranks[0]}x{len(ranks)}"
    comm = torch.classes.dynamoe.Communicator(address[0], int(address[1]), rank, ranks, name, backend)
    _COMMUNICATORS[group] = (comm, store)
    return comm


def expert_parallel_groups(ep_size):
    """(EP group, expert-data-parallel group) of this rank for ``ep_size`` consecutive ranks.

    Collective over the world: every rank must call it with the same ep_size.
    """
    if ep_size in _EP_GROUPS:
        return _EP_GROUPS[ep_size]
    world = dist.get_world_size()
    if ep_size < 1 or world % ep_size != 0:
        raise ValueError(f"dynamoe: ep_size must divide the world size {world}, got {ep_size}")
    me = dist.get_rank()
    ep_group = edp_group = None
    for g in range(world // ep_size):  # every rank creates every group, in the same order
        members = list(range(g * ep_size, (g + 1) * ep_size))
        pg = dist.new_group(members) if ep_size < world else dist.group.WORLD
        if me in members:
            ep_group = pg
    for i in range(ep_size):
        members = list(range(i, world, ep_size))
        pg = dist.new_group(members) if len(members) < world else dist.group.WORLD
        if me in members:
            edp_group = pg
    _EP_GROUPS[ep_size] = (ep_group, edp_group)
    _EXPERT_DP[ep_group] = edp_group
    return ep_group, edp_group


def _expert_dp_group(ep_group):
    """Ranks holding the same experts as this rank; collective over the world."""
    if ep_group in _EXPERT_DP:
        return _EXPERT_DP[ep_group]
    layouts = [None] * dist.get_world_size()
    dist.all_gather_object(layouts, (dist.get_rank(ep_group), _group_ranks(ep_group)))
    size = len(layouts[0][1])
    groups = sorted({tuple(layout[1]) for layout in layouts})
    mine = None
    for i in range(size):  # same order on every rank
        members = sorted(g[i] for g in groups)
        pg = dist.new_group(members) if len(members) < dist.get_world_size() else dist.group.WORLD
        if dist.get_rank() in members:
            mine = pg
    _EXPERT_DP[ep_group] = mine
    return mine


def is_expert_parameter(p):
    """True for parameters that reduce_gradients sums over the expert-data-parallel group."""
    return getattr(p, "_dynamoe_expert", False)


def reduce_gradients(model):
    """Makes gradients equal those of data-parallel training of the whole model (loss
    averaged over ranks): expert parameters of every distributed dynamoe.MoE are summed
    over their expert-data-parallel group, all other parameters over the world, and
    everything is divided by the world size. Call on every rank after backward.
    """
    from .moe import MoE
    world = dist.get_world_size()
    expert_ids = set()
    by_group = {}
    for m in model.modules():
        if isinstance(m, MoE) and m.group is not None:
            edp = _expert_dp_group(m.group)
            for p in m.expert_parameters():
                expert_ids.add(id(p))
                by_group.setdefault(edp, []).append(p)
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in expert_ids]
    by_group.setdefault(dist.group.WORLD, []).extend(dense)
    for group, params in by_group.items():
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        sum_gradients(params, group, divide_by=world)


def sum_gradients(params, group, divide_by=1):
    """All-reduces the gradients of params over group in one flat buffer, divided by divide_by."""
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    if dist.get_world_size(group) > 1:
        dist.all_reduce(flat, group=group)
    flat.div_(divide_by)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()
