"""DYNAMOE_CALIBRATE=online across real processes, and stats()["cost_model"]."""
import math
import os
import subprocess
import sys

from test_distributed import assert_all_ok, launch


def test_ranks_agree_on_plans_and_fitted_rates_while_their_timings_differ(tmp_path):
    # CHECK_PLAN: every step compares the plan hashes, and a mismatch fails the step.
    env = {"DYNAMOE_CALIBRATE": "online", "DYNAMOE_CHECK_PLAN": "1"}
    proc, reports = launch(tmp_path, 3, "--scenario=calibrate", "--experts=6", "--tokens=300,60,150",
                           "--stages=30", env=env)
    assert_all_ok(proc, reports)
    steps = [rep["steps"] for rep in reports]
    assert all(len(s) == 30 for s in steps)
    for i in range(30):
        assert len({s[i]["plan_hash"] for s in steps}) == 1, f"step {i}: plans differ"
        # Bitwise the same rates (JSON keeps a float's exact value).
        assert all(s[i]["cost_model"] == steps[0][i]["cost_model"] for s in steps), f"step {i}: fits differ"
    # The ranks measured different times (their token counts differ), yet fitted the same.
    last = [s[-1]["phase_seconds"] for s in steps]
    assert last[0]["experts"] != last[1]["experts"] and last[1]["experts"] != last[2]["experts"]
    cm = steps[0][-1]["cost_model"]
    assert cm["calibrating"] is True
    # The figures of step i arrive with step i + 1's count all-gather: 29 steps fitted.
    assert cm["fitted_steps"] == 29
    assert cm["error"] is not None and cm["error"] >= 0
    # The prior's 1.15e13 FLOP/s is no CPU core's: the fit replaced it (generous bound: one
    # CPU core does well under 1e12 FLOP/s).
    assert 0 < cm["flops"] < 1e12
    assert steps[0][0]["cost_model"]["flops"] > 1e12  # step 0 ran on the configured rates
    # A residual (the weighted median of total - modelled terms): on a loaded machine the
    # fitted slopes can over-predict, so it may be negative; it must be a number.
    assert math.isfinite(cm["fixed_seconds"])


def cost_model_of(code, **env):
    """Runs `code` in a fresh process (the configuration is read once per process) with `env`
    (None removes a variable) and returns the dict it printed."""
    full = dict(os.environ, DYNAMOE_LOG_LEVEL="warning",
                PYTHONPATH=os.path.join(os.path.dirname(__file__), "..", "..", "python"))
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    r = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return eval(r.stdout.strip())


def test_stats_report_the_configured_rates_without_calibration():
    # A fresh process: the configuration is read once per process.
    code = (
        "import torch, dynamoe\n"
        "m = dynamoe.MoE(8, 16, 4)\n"
        "m(torch.randn(5, 8)).sum().backward()\n"
        "print(repr(m.stats()['cost_model']))\n")
    cm = cost_model_of(code, DYNAMOE_GPU_FLOPS="3e9", DYNAMOE_INTRA_BW="7e8", DYNAMOE_CALIBRATE=None)
    assert cm["calibrating"] is False
    assert cm["flops"] == 3e9 and cm["intra_node_bytes_per_second"] == 7e8
    assert "error" not in cm


def test_a_single_process_layer_calibrates_itself():
    code = (
        "import torch, dynamoe\n"
        "torch.manual_seed(0)\n"
        "m = dynamoe.MoE(64, 256, 4)\n"
        "for i in range(20):\n"
        "    m(torch.randn(50 + 40 * (i % 4), 64)).sum().backward()\n"
        "print(repr(m.stats()['cost_model']))\n")
    cm = cost_model_of(code, DYNAMOE_CALIBRATE="online", OMP_NUM_THREADS="1")
    assert cm["calibrating"] is True and cm["fitted_steps"] == 19
    assert 0 < cm["flops"] < 1e12  # a CPU core's, not the configured 1.15e13
    assert cm["error"] is not None
