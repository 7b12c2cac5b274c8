"""The example job (examples/) as its users launch it: torchrun, 2 Gloo ranks,
once with policy none and once with FastMoE's shadowing switched on by
FMOE_FASTER_* variables. The loss must fall and match step for step."""
import json
import pathlib
import subprocess

import pytest

from test_distributed import NO_GLOO, rank_env, torchrun

ROOT = pathlib.Path(__file__).resolve().parents[2]
CPP = ROOT / "build" / "default" / "examples" / "gpt_moe"
STEPS = 30
# FastMoE's names; a slow modelled GPU makes the shadow policy copy experts here.
SHADOW = {"FMOE_FASTER_SHADOW_ENABLE": "1", "FMOE_FASTER_SCHEDULE_ENABLE": "1", "DYNAMOE_GPU_FLOPS": "1e6"}


def train(tmp_path, name, program, env):
    log = tmp_path / f"{name}.json"
    cmd = torchrun(2, *program, "--steps", STEPS, "--loss-log", log)
    r = subprocess.run(cmd, env=rank_env(**env), capture_output=True, text=True, timeout=300)
    if NO_GLOO in r.stdout + r.stderr:
        pytest.skip("dynamoe was built without Gloo (a pip CUDA wheel of torch); these ranks are CPU processes")
    assert r.returncode == 0 and log.exists(), r.stdout + r.stderr
    return json.loads(log.read_text())


@pytest.mark.parametrize("kind", ["python", "cpp"])
def test_loss_falls_and_matches_across_policies(tmp_path, kind):
    if kind == "cpp" and not CPP.exists():
        pytest.skip("build/default/examples/gpt_moe is not built")
    program = [str(ROOT / "examples" / "gpt_fastmoe.py")] if kind == "python" else ["--no_python", str(CPP)]
    none = train(tmp_path, "none", program, {})
    shadow = train(tmp_path, "shadow", program, SHADOW)
    assert len(none["loss"]) == len(shadow["loss"]) == STEPS
    assert sum(none["shadowed"]) == 0 and min(shadow["shadowed"]) > 0  # the policy really copied experts
    first, last = sum(none["loss"][:3]) / 3, sum(none["loss"][-3:]) / 3
    assert last < first - 1.0, none["loss"]  # a character model learns fast from ~ln(vocab)
    for step, (a, b) in enumerate(zip(none["loss"], shadow["loss"])):
        assert abs(a - b) <= 1e-4 * abs(a), (step, a, b)
