"""One rank of a Python expert-parallel test, started by torchrun (test_distributed.py).

Writes {"ok": bool, "errors": [...], "error": message, "elapsed_s": s} to <out>/rank<r>.json
and exits 0 (torchrun tears every worker down when one exits non-zero, and the
test wants every rank's report). The scenarios live in dist_equal.py, dist_placement.py,
dist_claims.py, dist_checkpoint.py and dist_faults.py; dist_common.py holds the arguments and the report.
"""
import datetime
import json
import os
import sys

import torch.distributed as dist

import dist_common
from dist_common import args, report

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

dist_common.setup()
rank, world = dist_common.rank, dist_common.world
if args.scenario == "config" and rank == 1:
    os.environ["DYNAMOE_PLACEMENT"] = "adaptive"  # read once, at dynamoe's first use
if args.scenario == "mismatch" and "ranks_per_node" in args.cases:
    os.environ["LOCAL_WORLD_SIZE"] = str(1 + rank)  # as two nodes of different sizes would report
# The scenario modules import dynamoe: after the environment above.
import dist_checkpoint  # noqa: E402
import dist_claims  # noqa: E402
import dist_equal  # noqa: E402
import dist_faults  # noqa: E402
import dist_placement  # noqa: E402


def claims():  # several checks in one launch, each reporting on its own
    for case in args.cases.split(","):
        dist_claims.CLAIMS[case]()


SCENARIOS = {"equal": dist_equal.equal, "placement": dist_placement.placement, "schedule": dist_placement.schedule,
             "calibrate": dist_placement.calibrate, "compat": dist_equal.compat,
             "checkpoint": dist_checkpoint.checkpoint, "retain": dist_checkpoint.retain,
             "portable": dist_checkpoint.portable, "restart": dist_checkpoint.restart,
             "mismatch": dist_faults.mismatch, "die": dist_faults.die, "custom": dist_equal.custom,
             "claims": claims, "own_connections": dist_faults.own_connections, "config": dist_faults.config}

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
    if args.scenario not in SCENARIOS:  # a typo must fail, not report an empty success
        raise RuntimeError(f"unknown --scenario {args.scenario!r}; expected one of {sorted(SCENARIOS)}")
    SCENARIOS[args.scenario]()
except RuntimeError as e:
    report["error"] = str(e)
with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
    json.dump(report, f)
sys.stdout.flush()
os._exit(0)  # skip teardown: after a failure the process groups are unusable
