"""The example job (examples/) as its users launch it: torchrun, 2 Gloo ranks, under every placement
policy: none, FastMoE's shadowing switched on by its FMOE_FASTER_* variables, and
DYNAMOE_PLACEMENT=adaptive and eplb. The loss must fall, every policy but none must copy experts,
and the losses must match none's step for step (a placement moves work, not arithmetic). The
loss is checked to fall over none's 30 steps; each policy runs the first 10 of them (adaptive, the
last to copy, copies from its 3rd step in the Python job and its 7th in the C++ one), enough to copy
experts and to be compared with none step for step."""
import pathlib

import pytest

from test_distributed import NO_GLOO, rank_env, run_torchrun, torchrun

ROOT = pathlib.Path(__file__).resolve().parents[2]
CPP = ROOT / "build" / "default" / "examples" / "gpt_moe"
STEPS = 30  # none: the loss falls by more than 1 nat over these
POLICY_STEPS = 10  # the other policies: the same steps, compared with none's first 10
# A slow modelled GPU makes copying experts pay on these small layers.
SLOW_GPU = {"DYNAMOE_GPU_FLOPS": "1e6"}
POLICIES = {
    "none": {},
    "fastermoe": {"FMOE_FASTER_SHADOW_ENABLE": "1", "FMOE_FASTER_SCHEDULE_ENABLE": "1", **SLOW_GPU},  # FastMoE's names
    "adaptive": {"DYNAMOE_PLACEMENT": "adaptive", **SLOW_GPU},
    "eplb": {"DYNAMOE_PLACEMENT": "eplb", **SLOW_GPU},
}
_none_runs = {}  # kind -> the none run's log, shared by the tests of that kind


def program(kind):
    if kind == "cpp" and not CPP.exists():
        pytest.skip("build/default/examples/gpt_moe is not built")
    return [str(ROOT / "examples" / "gpt_fastmoe.py")] if kind == "python" else ["--no_python", str(CPP)]


def train(tmp_path, kind, policy, steps):
    # The loss log is named as run_torchrun's rank-0 report, so that a run whose rendezvous port
    # was taken (no log) is retried on a new port.
    proc, (out, _) = run_torchrun(
        lambda folder: torchrun(2, *program(kind), "--steps", steps, "--loss-log", folder / "rank0.json"),
        tmp_path / f"{kind}-{policy}", 2, rank_env(**POLICIES[policy]), timeout=300)
    if NO_GLOO in proc.stdout + proc.stderr:
        pytest.skip("dynamoe was built without Gloo (a pip CUDA wheel of torch); these ranks are CPU processes")
    assert proc.returncode == 0 and out is not None, proc.stdout + proc.stderr
    assert len(out["loss"]) == len(out["shadowed"]) == steps
    return out


def none_run(tmp_path, kind):
    if kind not in _none_runs:
        _none_runs[kind] = train(tmp_path, kind, "none", STEPS)
    return _none_runs[kind]


@pytest.mark.parametrize("kind", ["python", "cpp"])
def test_loss_falls_under_none(tmp_path, kind):
    none = none_run(tmp_path, kind)
    assert sum(none["shadowed"]) == 0  # no policy: no copies
    first, last = sum(none["loss"][:3]) / 3, sum(none["loss"][-3:]) / 3
    assert last < first - 1.0, none["loss"]  # a character model learns fast from ~ln(vocab)


@pytest.mark.parametrize("policy", ["fastermoe", "adaptive", "eplb"])
@pytest.mark.parametrize("kind", ["python", "cpp"])
def test_every_policy_copies_experts_and_matches_none(tmp_path, kind, policy):
    none = none_run(tmp_path, kind)
    run = train(tmp_path, kind, policy, POLICY_STEPS)
    assert sum(run["shadowed"]) > 0, run["shadowed"]  # the policy really copied experts
    # Copies compute the same rows with the same weights; only fp32 sums of gradients returned
    # from copies may be added in another order (measured: at most 4.8e-7 relative). The learning
    # rate is constant, so none's first steps are those of a shorter none run.
    for step, (a, b) in enumerate(zip(none["loss"], run["loss"])):
        assert abs(a - b) <= 1e-4 * abs(a), (step, a, b)
