"""Activation checkpointing: torch.utils.checkpoint re-runs forward during backward.
The recomputation must route exactly as the forward did (step, expert bias, RTS,
noise), and the step's side effects (step counter, bias update, metrics, trace)
must happen once. (Expert parallelism: test_distributed.py.)"""
import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import dynamoe
from test_distributed import free_port

CASES = {
    # the expert-bias update and RTS drop order both depend on the step
    "bias_update": dict(bias_update_rate=0.1, capacity_factor=0.75),
    "rts": dict(use_rts=True, capacity_factor=0.75),
    "jitter": dict(noisy_gate_policy="Jitter", jitter_eps=0.2, capacity_factor=1.0),
    "all": dict(bias_update_rate=0.1, use_rts=True, noisy_gate_policy="Jitter", capacity_factor=0.75, gated=True,
                bias=True),
}


def run_steps(m, steps, ckpt, reentrant=True, custom=False):
    """Training steps with SGD; per step: output, input gradient, parameter gradients, bias, step."""
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    out = []
    for step in range(steps):
        x = torch.randn(40, 8, generator=torch.Generator().manual_seed(step)).requires_grad_(True)
        opt.zero_grad()

        def fn(t):
            return m(t), m.aux_loss

        torch.manual_seed(100 + step)  # the forward draws from torch's CPU generator
        y, aux = checkpoint(fn, x, use_reentrant=reentrant) if ckpt else fn(x)
        (y.square().sum() + aux).backward()
        out.append((y.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in m.named_parameters()},
                    m.expert_bias.clone(), m.step, m.stats()["counts"].clone()))
        opt.step()
    return out


def assert_same(a, b):
    for step, (ra, rb) in enumerate(zip(a, b)):
        assert torch.equal(ra[0], rb[0]), f"step {step}: output"
        assert torch.equal(ra[1], rb[1]), f"step {step}: input gradient"
        for n in ra[2]:
            assert torch.equal(ra[2][n], rb[2][n]), f"step {step}: gradient of {n}"
        assert torch.equal(ra[3], rb[3]), f"step {step}: expert_bias {ra[3]} vs {rb[3]}"
        assert ra[4] == rb[4] == step + 1, f"step {step}: step counter {ra[4]} vs {rb[4]}"
        assert torch.equal(ra[5], rb[5]), f"step {step}: counts"


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non_reentrant"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_recomputation_routes_as_the_forward(case, reentrant):
    torch.manual_seed(0)
    plain = dynamoe.MoE(8, 16, 6, top_k=2, min_capacity=1, **CASES[case])
    ckpt = copy.deepcopy(plain)
    want = run_steps(plain, 4, ckpt=False)
    got = run_steps(ckpt, 4, ckpt=True, reentrant=reentrant)
    assert_same(got, want)
    if "bias_update_rate" in CASES[case]:
        assert any(not torch.equal(r[3], torch.zeros(6)) for r in want), "the bias moved"


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non_reentrant"])
def test_custom_experts_recompute_the_same_routing(reentrant):
    torch.manual_seed(0)
    expert = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.GELU(), torch.nn.Linear(12, 8))
    plain = dynamoe.MoE(8, 12, 4, top_k=2, expert=expert, bias_update_rate=0.1, use_rts=True, capacity_factor=0.75,
                        min_capacity=1)
    ckpt = copy.deepcopy(plain)
    assert_same(run_steps(ckpt, 3, ckpt=True, reentrant=reentrant), run_steps(plain, 3, ckpt=False))


def test_the_original_stats_survive_the_recomputation():
    m = dynamoe.MoE(8, 16, 4, top_k=2)
    x = torch.randn(10, 8, requires_grad=True)
    y = checkpoint(m, x, use_reentrant=False)
    before = m.stats()
    y.sum().backward()  # recomputes
    after = m.stats()
    assert after["phase_seconds"] == before["phase_seconds"]
    assert m.step == 1


def test_recomputation_without_the_generator_state_is_an_error():
    m = dynamoe.MoE(8, 16, 4, top_k=2, name="ckpt_layer")
    x = torch.randn(10, 8, requires_grad=True)
    y = checkpoint(m, x, use_reentrant=True, preserve_rng_state=False)
    torch.rand(1)  # moves the generator: the recomputation draws another id
    with pytest.raises(RuntimeError, match=r"layer 'ckpt_layer': a training forward ran inside a backward pass.*"
                                           r"preserve_rng_state=True"):
        y.sum().backward()


def test_the_step_counts_once_in_metrics_and_trace(tmp_path):
    """A real process with DYNAMOE_TRACE and DYNAMOE_METRICS_PORT: 3 checkpointed steps of 20
    tokens at top-2 are 3 trace records and 120 routed assignments, not 6 and 240."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, urllib.request
        sys.path.insert(0, {str(os.path.join(os.path.dirname(__file__), "..", "..", "python"))!r})
        import torch, dynamoe
        from torch.utils.checkpoint import checkpoint
        m = dynamoe.MoE(8, 16, 4, top_k=2, name="ck")
        for step in range(3):
            x = torch.randn(20, 8, requires_grad=True)
            checkpoint(m, x, use_reentrant=step % 2 == 0).sum().backward()
        text = urllib.request.urlopen("http://127.0.0.1:" + sys.argv[1] + "/metrics").read().decode()
        routed = sum(float(l.split()[-1]) for l in text.splitlines()
                     if l.startswith("dynamoe_routed_tokens_total{{") and 'layer="ck"' in l)
        print(json.dumps({{"routed": routed, "step": m.step}}))
    """))
    for _ in range(4):  # a port taken between choosing and binding: again on another
        port = free_port()
        env = dict(os.environ, DYNAMOE_TRACE=str(tmp_path / "t"), DYNAMOE_METRICS_PORT=str(port),
                   DYNAMOE_LOG_LEVEL="warning")
        proc = subprocess.run([sys.executable, str(script), str(port)], env=env, capture_output=True, text=True,
                              timeout=120)
        if proc.returncode == 0 or "Address already in use" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"routed": 120.0, "step": 3}
    replay = os.path.join(os.path.dirname(__file__), "..", "..", "build", "default", "tools", "dynamoe-replay")
    out = subprocess.run([replay, "run", str(tmp_path / "t.rank0.dmtrace"), "--policies", "none"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "3 steps of 1 layer," in out.stdout, out.stdout

