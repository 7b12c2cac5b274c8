"""dist_worker.py's failure and process-level scenarios: a rank dying mid-backward, ranks
running a layer differently, conflicting configuration, and the connections dynamoe opens."""
import collections
import os
import time

import torch
import torch.distributed as dist

import dynamoe
from dist_common import args, check, rank, report, tokens_of, world


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


def config():
    """Rank 1 runs with DYNAMOE_PLACEMENT=adaptive (dist_worker.py sets it before dynamoe's import):
    building the communicator must raise on every rank, naming the configuration that differs."""
    dynamoe.communicator(dist.group.WORLD)
    check(False, "no error was raised")


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
