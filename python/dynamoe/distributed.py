"""Expert parallelism over torch.distributed groups.

dynamoe.MoE(..., group=pg) spreads the experts over the ranks of ``pg``
(rank r holds experts [r*E_local, (r+1)*E_local)); ``ep_size=k`` builds the
groups itself, DeepSpeed-style (consecutive ranks form an EP group).

How the C++ runtime reaches the group. It runs every collective on ``pg``
itself, whatever its backend (NCCL, Gloo, Gloo moving CUDA tensors): the C++
side finds it in torch's group registry by ``pg.group_name``. dynamoe still
wraps each collective in its deadline and peer diagnosis; their keys go to a
store: the job's own store at MASTER_ADDR:MASTER_PORT (torchrun's agent store,
or env:// initialisation), as a client, so dynamoe opens no listening socket
of its own. Its keys are scoped to this incarnation of the job and to this
group. Without MASTER_ADDR/MASTER_PORT (a tcp:// or file:// init), the
group's rank 0 hosts a TCPStore on the advertised address and broadcasts it.
Gradients are reduced with the user's own torch.distributed groups
(``reduce_gradients``).

Every torch.distributed call made here has dynamoe's deadline
(DYNAMOE_TIMEOUT_S): a rank that does not take part is an error naming the
group and the call, not a hang.
"""
import atexit
import datetime
import os
import pickle
import socket
import time

import torch
import torch.distributed as dist

from ._ops import ops

_COMMUNICATORS = {}   # group -> (communicator, store kept alive on rank 0)
_EP_GROUPS = {}       # ep_size -> (this rank's EP group, its expert-DP group)
_EXPERT_DP = {}       # EP group -> expert-DP group


def _timeout():
    return datetime.timedelta(seconds=float(ops().config_get("DYNAMOE_TIMEOUT_S")))


def _wait(work, what, group):
    """Waits for an async torch.distributed call under dynamoe's deadline."""
    try:
        work.wait(_timeout())
    except RuntimeError as e:
        ranks = _ranks_of(group)
        raise RuntimeError(
            f"dynamoe: {what} over the group of world ranks {ranks} did not complete within DYNAMOE_TIMEOUT_S="
            f"{_timeout().total_seconds():g} s: a rank did not make the same call (every rank must build the same "
            f"dynamoe layers and call reduce_gradients together), died or is frozen ({e})") from None


def _ranks_of(group):
    if group is None or group is dist.group.WORLD:
        return list(range(dist.get_world_size()))
    return list(dist.get_process_group_ranks(group))


def _all_gather_bytes(data, group, what):
    """Every member's bytes, in group rank order, under the deadline (two async all_gathers)."""
    size = dist.get_world_size(group)
    # NCCL moves CUDA tensors only; Gloo (and the rest) CPU ones.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
    mine = torch.tensor([len(data)], dtype=torch.int64, device=device)
    lengths = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(size)]
    _wait(dist.all_gather(lengths, mine, group=group, async_op=True), what, group)
    longest = max(int(t.item()) for t in lengths)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[:len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    out = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(size)]
    _wait(dist.all_gather(out, padded, group=group, async_op=True), what, group)
    return [bytes(t[:int(n.item())].cpu().tolist()) for t, n in zip(out, lengths)]


def _advertised_host():
    configured = ops().config_get("DYNAMOE_COMM_ADDR")
    if configured:
        return configured
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


def _store_address(group, rank):
    """(host, port, store to keep alive): the job's store, or one this group's rank 0 hosts."""
    master, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if master and port:
        return master, int(port), None
    store = None
    address = [None, None]
    if rank == 0:
        host = _advertised_host()
        store = dist.TCPStore(host, 0, dist.get_world_size(group), True, _timeout(), wait_for_workers=False)
        address = [host, store.port]
    address = pickle.loads(_all_gather_bytes(pickle.dumps(address), group, "sharing the store address")[0])
    return address[0], address[1], store


@atexit.register
def _release_communicators():
    # torch's Gloo thread releases a finished collective's work (and Python objects in the
    # thread-local state it captured) just after the waiting rank resumes; if that release comes
    # once the interpreter is finalizing, it aborts ("terminate called without an active
    # exception"). A short grace before finalization lets the last one go first.
    if _COMMUNICATORS:
        _COMMUNICATORS.clear()
        time.sleep(0.2)


def communicator(group=None):
    """The dynamoe communicator of a torch.distributed group (created once per group).

    Every member must call it at the same point (members create a group's
    communicator together).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("dynamoe: group= needs torch.distributed.init_process_group() first")
    group = dist.group.WORLD if group is None else group
    if group in _COMMUNICATORS:
        return _COMMUNICATORS[group][0]
    ops()  # loads the library that registers torch.classes.dynamoe
    ranks = _ranks_of(group)
    rank = dist.get_rank(group)
    host, port, store = _store_address(group, rank)
    name = "g" + "-".join(str(r) for r in ranks) if len(ranks) <= 8 else f"g{ranks[0]}x{len(ranks)}"
    # The collectives run on the group itself, whatever its backend.
    comm = ops().group_communicator(group.group_name, host, int(port), ranks, name)
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
        pg = dist.new_group(members, timeout=_timeout()) if ep_size < world else dist.group.WORLD
        if me in members:
            ep_group = pg
    for i in range(ep_size):
        members = list(range(i, world, ep_size))
        pg = dist.new_group(members, timeout=_timeout()) if len(members) < world else dist.group.WORLD
        if me in members:
            edp_group = pg
    _EP_GROUPS[ep_size] = (ep_group, edp_group)
    _EXPERT_DP[ep_group] = edp_group
    return ep_group, edp_group


def _expert_dp_group(ep_group):
    """Ranks holding the same experts as this rank; collective over the world."""
    if ep_group in _EXPERT_DP:
        return _EXPERT_DP[ep_group]
    layouts = [pickle.loads(b) for b in _all_gather_bytes(pickle.dumps(_ranks_of(ep_group)), None,
                                                           "finding the expert-data-parallel groups")]
    size = len(layouts[0])
    groups = sorted({tuple(layout) for layout in layouts})
    mine = None
    for i in range(size):  # same order on every rank
        members = sorted(g[i] for g in groups)
        pg = (dist.new_group(members, timeout=_timeout()) if len(members) < dist.get_world_size()
              else dist.group.WORLD)
        if dist.get_rank() in members:
            mine = pg
    _EXPERT_DP[ep_group] = mine
    return mine


class ExpertParallel:
    """A module whose expert parameters live on an expert-parallel group: ``group`` (None:
    every expert local) and ``expert_parameters()``. dynamoe.MoE is one; reduce_gradients
    finds them by this base, so this module needs nothing from moe.py."""
    group = None

    def expert_parameters(self):
        raise NotImplementedError


def is_expert_parameter(p):
    """True for parameters that reduce_gradients sums over the expert-data-parallel group."""
    return getattr(p, "_dynamoe_expert", False)


def reduce_gradients(model):
    """Makes gradients equal those of data-parallel training of the whole model (loss
    averaged over ranks): expert parameters of every distributed dynamoe.MoE are summed
    over their expert-data-parallel group, all other parameters over the world, and
    everything is divided by the world size. Call on every rank after backward.
    """
    world = dist.get_world_size()
    expert_ids = set()
    by_group = {}
    for m in model.modules():
        if isinstance(m, ExpertParallel) and m.group is not None:
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
        _wait(dist.all_reduce(flat, group=group, async_op=True), f"all_reduce of {len(params)} gradients", group)
    flat.div_(divide_by)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()
