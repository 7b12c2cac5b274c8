"""dynamoe.MoE(group=pg) across real processes started by torchrun (Gloo)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

WORKER = os.path.join(os.path.dirname(__file__), "dist_worker.py")


def free_port():
    """A port free now; another process may take it before it is bound again (callers retry:
    run_torchrun, test_metrics.py)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(world, *program):
    """torchrun's command line for `world` local ranks running program (a free port)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            # Debian torch 1.13 on Python 3.11: torchrun maps the default "0" to None (IntFlag change).
            "--redirects=2", "--tee=2", *map(str, program)]


def rank_env(**extra):
    """The environment of test ranks: quiet logs, one thread each (2 cores)."""
    return dict(os.environ, DYNAMOE_LOG_LEVEL="warning", OMP_NUM_THREADS="1", **extra)


PORT_TAKEN = ("Address already in use", "EADDRINUSE")


def run_torchrun(make_cmd, out, world, env, timeout=240, tries=4):
    """Runs make_cmd(out_dir) (a torchrun command line on a fresh free_port()) and returns (proc,
    reports); when the rendezvous port was taken between choosing and binding (no rank reported,
    "Address already in use"), runs again on a new port and a new output folder."""
    for attempt in range(tries):
        folder = out if attempt == 0 else out / f"retry{attempt}"
        folder.mkdir(exist_ok=True)
        proc = subprocess.run(make_cmd(folder), env=env, capture_output=True, text=True, timeout=timeout)
        reports = []
        for r in range(world):
            path = folder / f"rank{r}.json"
            reports.append(json.loads(path.read_text()) if path.exists() else None)
        if any(reports) or not any(t in proc.stdout + proc.stderr for t in PORT_TAKEN):
            break
    return proc, reports


def launch(tmp_path, world, *args, env=None, timeout=240):
    return run_torchrun(lambda out: torchrun(world, WORKER, "--out", out, *args), tmp_path, world,
                        rank_env(**(env or {})), timeout)


# dynamoe built without Gloo's headers: its C++ workers' own groups cannot form (the Python layers,
# on the caller's groups, never need them).
NO_GLOO = "this build has no Gloo"


def assert_all_ok(proc, reports):
    """Every rank wrote a report without an error or a failed check."""
    for r, rep in enumerate(reports):
        assert rep is not None, f"rank {r} wrote no report:\n{proc.stdout}\n{proc.stderr}"
        assert "error" not in rep, rep["error"]
        assert rep["ok"], rep["errors"]


@pytest.mark.parametrize("world,args", [
    (2, ["--top_k=2", "--tokens=5,0"]),
    (3, ["--top_k=1", "--gated=1", "--capacity=1.0", "--tokens=9,0,17"]),
    (4, ["--top_k=4", "--tokens=5,3,17,0"]),
    (4, ["--top_k=2", "--ep_size=2", "--capacity=0.75", "--tokens=8,0,13,5"]),
])
def test_matches_single_process_layer(tmp_path, world, args):
    proc, reports = launch(tmp_path, world, *args)
    assert_all_ok(proc, reports)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (scripts/gpu_check.sh runs these)")
@pytest.mark.parametrize("world", [2, 4])
def test_cuda_tensors_over_a_gloo_group_match_one_process(tmp_path, world):
    # Every rank's layer on the one GPU, its collectives on the caller's Gloo group moving CUDA
    # tensors (NCCL refuses two ranks on one device).
    proc, reports = launch(tmp_path, world, "--device=cuda", "--top_k=2", "--tokens=5,0,17,9")
    assert_all_ok(proc, reports)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (scripts/gpu_check.sh runs these)")
@pytest.mark.parametrize("scenario,experts,tokens,env", [
    # Copies of the hot expert (every policy against none): weights broadcast, gradients returned.
    ("placement", 8, "13,7,0,9", {"DYNAMOE_GPU_FLOPS": "1e6", "DYNAMOE_CHECK_PLAN": "1"}),
    # The overlap pipeline against the sequential exchange, with and without copies.
    ("schedule", 6, "13,7,0", {"FMOE_FASTER_SCHEDULE_ENABLE": "1", "FMOE_FASTER_GROUP_SIZE": "1",
                               "DYNAMOE_OVERLAP_DEGREE": "2", "DYNAMOE_GPU_FLOPS": "1e6"}),
])
def test_copies_and_overlap_with_cuda_tensors_over_a_gloo_group(tmp_path, scenario, experts, tokens, env):
    world = len(tokens.split(","))
    proc, reports = launch(tmp_path, world, f"--scenario={scenario}", f"--experts={experts}",
                           f"--tokens={tokens}", "--device=cuda", env=env)
    assert_all_ok(proc, reports)


@pytest.mark.parametrize("world,args", [(2, ["--top_k=2", "--tokens=9,14"]),
                                        (3, ["--top_k=1", "--capacity=1.0", "--tokens=9,0,17"])])
def test_custom_expert_modules_with_expert_parallelism(tmp_path, world, args):
    proc, reports = launch(tmp_path, world, "--scenario=custom", "--experts=6", *args)
    assert_all_ok(proc, reports)


@pytest.mark.parametrize("world", [2, 4])
def test_placement_policies_match_none(tmp_path, world):
    env = {"DYNAMOE_GPU_FLOPS": "1e6", "DYNAMOE_CHECK_PLAN": "1"}  # slow modelled GPU: copies pay off
    proc, reports = launch(tmp_path, world, "--scenario=placement", "--experts=8", "--tokens=13,7,0,9", env=env)
    assert_all_ok(proc, reports)


@pytest.mark.parametrize("world", [2, 3])
def test_overlap_schedule_matches_sequential(tmp_path, world):
    # FastMoE's names switch the schedule on; group size 1 and degree 2: 2 * (world - 1) stages.
    env = {"FMOE_FASTER_SCHEDULE_ENABLE": "1", "FMOE_FASTER_GROUP_SIZE": "1", "DYNAMOE_OVERLAP_DEGREE": "2",
           "DYNAMOE_GPU_FLOPS": "1e6"}
    proc, reports = launch(tmp_path, world, "--scenario=schedule", "--experts=6", "--tokens=13,7,0", env=env)
    assert_all_ok(proc, reports)


@pytest.mark.parametrize("world", [2, 3])
def test_checkpointing_recomputes_the_same_routing(tmp_path, world):
    # Slow modelled GPU: copies pay off, so the policies' plans are exercised too.
    env = {"DYNAMOE_GPU_FLOPS": "1e6", "DYNAMOE_CHECK_PLAN": "1"}
    proc, reports = launch(tmp_path, world, "--scenario=checkpoint", "--experts=6", "--tokens=13,7,9", env=env)
    assert_all_ok(proc, reports)
    for what in reports[0]["dropped"]:  # the cases really drop tokens and (but for none) copy experts
        assert sum(rep["dropped"][what] for rep in reports) > 0, what
        if not what.startswith("none/"):
            assert reports[0]["copied"][what] > 0, what


def test_portable_checkpoint_across_expert_parallel_sizes_and_pickling(tmp_path):
    env = {"DYNAMOE_GPU_FLOPS": "1e6"}  # slow modelled GPU: fastermoe copies hot experts
    proc, reports = launch(tmp_path, 4, "--scenario=portable", "--experts=8", "--tokens=13,7,9,11", env=env)
    assert_all_ok(proc, reports)
    assert reports[0]["copied"] > 0  # copies existed when the checkpoint was taken, and stayed out of it


def test_restarted_job_builds_fresh_groups_on_the_agent_store(tmp_path):
    # torchrun's agent keeps its store across restarts: the second incarnation
    # must not meet the first one's keys (dynamoe scopes them by restart count).
    def command(out):
        cmd = torchrun(2, WORKER, "--out", out, "--scenario=restart", "--tokens=7,5")
        cmd.insert(cmd.index(WORKER), "--max_restarts=1")
        return cmd

    proc, reports = run_torchrun(command, tmp_path, 2, rank_env(DYNAMOE_TIMEOUT_S="20"))
    assert all(reports), proc.stdout + proc.stderr
    assert_all_ok(proc, reports)
    assert [rep["incarnation"] for rep in reports] == [1, 1], reports
    assert proc.returncode == 0, proc.stderr


def test_second_backward_through_the_overlap_pipeline(tmp_path):
    proc, reports = launch(tmp_path, 3, "--scenario=retain", "--experts=6", "--tokens=13,7,9",
                           env={"DYNAMOE_GROUP_SIZE": "1", "DYNAMOE_OVERLAP_DEGREE": "2"})
    assert_all_ok(proc, reports)


def test_ranks_that_run_a_layer_differently_are_named_before_tokens_move(tmp_path):
    cases = "dtype,d_hidden,gated,bias,placement,schedule,group_size,overlap_degree,eval,no_grad"
    proc, reports = launch(tmp_path, 2, "--scenario=mismatch", f"--cases={cases}", env={"DYNAMOE_TIMEOUT_S": "20"})
    assert_all_ok(proc, reports)


def test_ranks_per_node_mismatch_is_named(tmp_path):
    # 3 ranks, LOCAL_WORLD_SIZE 1, 2 and 3: the cost model would see different clusters.
    proc, reports = launch(tmp_path, 3, "--scenario=mismatch", "--cases=ranks_per_node",
                           env={"DYNAMOE_TIMEOUT_S": "20"})
    assert_all_ok(proc, reports)


def test_rank_exiting_in_backward_is_named(tmp_path):
    proc, reports = launch(tmp_path, 3, "--scenario=die", env={"DYNAMOE_TIMEOUT_S": "3"})
    assert reports[2] is None  # it exited without a report
    for r in (0, 1):
        rep = reports[r]
        assert rep is not None, proc.stderr
        assert "layer 'moe' phase 'combine' (backward)" in rep["error"], rep["error"]
        # Named by its stopped heartbeat, not by the deadline; the bound only catches a hang.
        assert "rank 2 stopped responding" in rep["error"], rep["error"]
        assert rep["elapsed_s"] < 60, rep["elapsed_s"]


def test_mismatched_configuration_is_named_on_every_rank(tmp_path):
    proc, reports = launch(tmp_path, 2, "--scenario=config", env={"DYNAMOE_TIMEOUT_S": "5"})
    for rep in reports:
        assert rep is not None, proc.stderr
        assert "configuration differs between ranks: DYNAMOE_PLACEMENT=" in rep["error"], rep["error"]


def test_allreduce_params_averages_over_several_holders(tmp_path):
    # 4 ranks, FastMoE world_size 2: every expert has two holders with different tokens.
    proc, reports = launch(tmp_path, 4, "--scenario=claims", "--cases=dgdp", "--tokens=13,7,9,11")
    assert_all_ok(proc, reports)


def test_bias_update_tutel_overlap_auto_degree_and_plan_check(tmp_path):
    """README claims in one 2-rank launch: the distributed bias_update_rate update, Tutel's
    a2a_ffn_overlap_degree=2, overlap_degree=0 from the cost model, DYNAMOE_CHECK_PLAN=1 naming
    the ranks whose plans differ (dist_claims.py: bias_claim, tutel_claim, auto_claim, plan_claim)."""
    env = {"DYNAMOE_CHECK_PLAN": "1", "DYNAMOE_PLACEMENT_HYSTERESIS": "1",  # adaptive keeps its first plan
           "DYNAMOE_GPU_FLOPS": "1e6",  # slow modelled GPU: copies pay off
           # no per-stage latency: min(x, c) / stages only falls, so the cap (16 stages) wins
           "DYNAMOE_LATENCY_US": "0"}
    proc, reports = launch(tmp_path, 2, "--scenario=claims", "--cases=bias,tutel,auto,plan", "--stages=16",
                           "--tokens=13,7", env=env)
    assert_all_ok(proc, reports)


def test_auto_overlap_degree_with_a_costly_stage_is_one(tmp_path):
    # 10 s per message: every extra stage costs 20 s and saves microseconds, so 1 stage.
    proc, reports = launch(tmp_path, 2, "--scenario=claims", "--cases=auto", "--stages=1",
                           env={"DYNAMOE_LATENCY_US": "1e7"})
    assert_all_ok(proc, reports)


def test_layers_run_on_the_callers_groups_without_connections_of_their_own(tmp_path):
    proc, reports = launch(tmp_path, 2, "--scenario=own_connections")
    assert_all_ok(proc, reports)


ALIVE_AT_EXIT = """
import sys
sys.path.insert(0, {python!r})
import torch, torch.distributed as dist, dynamoe
dist.init_process_group("gloo")
moe = dynamoe.MoE(6, 10, 4, group=dist.group.WORLD, name="alive").double()
x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
moe(x).sum().backward()
print("stepped", flush=True)
# No destroy_process_group: the layer, its communicator and torch's group live until the interpreter ends.
"""


def test_a_job_that_exits_with_its_layers_alive_exits_cleanly(tmp_path):
    # dynamoe holds the caller's group weakly: torch tears its groups down at exit as it would without
    # dynamoe (holding it strongly aborted one exit in three: "terminate called without an active
    # exception"). Three jobs, each with a module-level layer.
    script = tmp_path / "alive.py"
    script.write_text(ALIVE_AT_EXIT.format(python=os.path.join(os.path.dirname(WORKER), "..", "..", "python")))
    for i in range(3):
        proc, _ = run_torchrun(lambda out: torchrun(2, script), tmp_path / f"run{i}", 2, rank_env())
        assert proc.returncode == 0 and "terminate called" not in proc.stderr, proc.stdout + proc.stderr
        assert proc.stdout.count("stepped") == 2, proc.stdout + proc.stderr
