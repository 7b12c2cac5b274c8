"""Hand-computed fixtures for capacity, drop order and RTS; bad input; the
environment; custom experts, residual, noise, the aux-loss-free bias, z-loss."""
import os
import subprocess
import sys

import pytest
import torch

import dynamoe
import reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def identity_gate_layer(E=4, **kw):
    """d_model == E and gate.weight = I, so logits == x and routing is chosen by x."""
    m = dynamoe.MoE(E, 6, E, **kw)
    with torch.no_grad():
        m.gate.weight.copy_(torch.eye(E))
    return m


def test_top1_capacity_drops_by_position():
    m = identity_gate_layer(top_k=1, capacity_factor=1.0, min_capacity=1)  # cap = ceil(6/4) = 2
    x = torch.tensor([[5.0, 0, 0, 0]] * 5 + [[0, 5.0, 0, 0]])
    y = m(x)
    s = m.stats()
    assert s["capacity"] == 2 and s["dropped"] == 3
    assert s["counts"].tolist() == [[2, 1, 0, 0]]
    assert s["routed_counts"].tolist() == [5, 1, 0, 0]
    assert torch.all(y[2:5] == 0) and torch.all(y[:2] != 0)  # dropped tokens contribute zero


def test_first_choices_claim_before_second_choices():
    m = identity_gate_layer(top_k=2, capacity_factor=0.5, min_capacity=1)  # cap = ceil(2*4/4*0.5) = 1
    x = torch.tensor([[3.0, 2, 0, 0], [2, 3.0, 0, 0], [3.0, 0, 2, 0], [0, 0, 3.0, 2]])
    idx, w, pos, kept, routed, _, _ = torch.ops.dynamoe.route(
        x, m.gate.weight, None, 2, 0.5, 1, True, False, 0, 0, "none", 0.01, True, False, "fixture")
    assert idx.tolist() == [[0, 1], [1, 0], [0, 2], [2, 3]]
    # expert 0: t0 (1st) wins over t2 (1st, later token) and t1 (2nd choice);
    # expert 1: t1's first choice wins over t0's second; expert 2: t3 over t2's second.
    assert (pos >= 0).tolist() == [[True, False], [True, False], [False, False], [True, True]]
    assert kept.tolist() == [1, 1, 1, 1] and routed.tolist() == [3, 2, 2, 1]
    assert pos[pos >= 0].sort().values.tolist() == [0, 1, 2, 3]
    # kept weights are not renormalised after the drop
    y = m(x)
    assert torch.allclose(w.sum(1), torch.ones(4))
    assert torch.all(y[2] == 0)


def _rts_kept(seed, step, T, cap):
    """Tokens DeepSpeed's top1gating keeps when all T go to one expert: the cap
    highest per-token draws (here the reference's seeded priority)."""
    return set(sorted(range(T), key=lambda t: -reference.rts_priority(seed, step, t, 0))[:cap])


def test_rts_reference_priority_is_splitmix64():
    # Anchors reference.rts_priority to the published splitmix64 sequence: from
    # state 0 the first output is 0xE220A8397B1DCDAF (the priority's top 53 bits).
    assert reference.rts_priority(0, 0, 0, 0) == (0xE220A8397B1DCDAF >> 11) / 2.0 ** 53
    dynamoe.load_library()
    for args in ((1, 0, 5, 0), (7, 3, 11, 1), (2 ** 40 + 3, 123456, 999999, 3)):
        assert torch.ops.dynamoe.rts_priority(*args) == reference.rts_priority(*args), args


def test_rts_priority_is_uniform_like_deepspeeds_draw():
    """DeepSpeed draws U(0, 1) per token (seeds/000, top1gating): 20000 priorities
    over tokens, steps and choices fill 10 bins evenly (binomial sd ~42 per bin: 6 sd)."""
    dynamoe.load_library()
    draws = [torch.ops.dynamoe.rts_priority(3, s, t, j) for s in range(5) for t in range(2000) for j in range(2)]
    assert min(draws) >= 0.0 and max(draws) < 1.0
    bins = torch.histc(torch.tensor(draws, dtype=torch.float64), bins=10, min=0.0, max=1.0)
    assert (bins - 2000).abs().max() < 250, bins.tolist()


def test_rts_keeps_highest_seeded_priorities_and_changes_with_the_step():
    T, cap = 10, 3
    x = torch.tensor([[5.0, 0, 0, 0]] * T)
    cf = cap / (T / 4)  # ceil(1*10/4*cf) = 3
    # The fixture can tell seed, step and token order apart: a layer that ignored
    # the seed or the step, or kept the first tokens, would fail below.
    want = {(seed, step): _rts_kept(seed, step, T, cap) for seed in (1, 2) for step in (0, 1, 2)}
    assert len({frozenset(v) for v in want.values()}) == len(want)
    assert set(range(cap)) not in want.values()
    for seed in (1, 2):
        m = identity_gate_layer(top_k=1, capacity_factor=cf, min_capacity=1, use_rts=True, rts_seed=seed)
        for step in (0, 1, 2):  # each training forward is one step (README: priority of rts_seed, step, token)
            assert m.step == step
            y = m(x)
            assert m.stats()["dropped"] == T - cap
            got = set(torch.nonzero(y.abs().sum(1) > 0).flatten().tolist())  # a dropped token's output is 0
            assert got == want[(seed, step)], (seed, step)
        m.eval()
        m(x)  # an eval forward does not advance the step
        assert m.step == 3


def test_rts_matches_reference_with_priority_order():
    torch.manual_seed(5)
    m = dynamoe.MoE(8, 12, 4, top_k=2, capacity_factor=0.5, min_capacity=1, use_rts=True, rts_seed=7)
    x = torch.randn(24, 8)
    p = {k: getattr(m, k) for k in ("w1", "w2")}
    for step in (0, 1):  # training mode: the step advances with each forward
        y = m(x)
        yr, _, kept = reference.moe(x, m.gate.weight, p, 2, 0.5, 1, None, "gelu",
                                    keep_order=reference.rts_keep_order(7, step))
        y_by_position, _, _ = reference.moe(x, m.gate.weight, p, 2, 0.5, 1, None, "gelu")
        assert (y_by_position - yr).abs().max() > 0.01  # the fixture differs from the token drop order
        # fp32 per-token matvec (reference) vs the layer's GEMMs: reduction order only
        torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-6)
        assert m.stats()["counts"].tolist() == [kept]


def test_eval_capacity_factor():
    m = identity_gate_layer(top_k=1, capacity_factor=1.0, eval_capacity_factor=0.0, min_capacity=1)
    x = torch.tensor([[5.0, 0, 0, 0]] * 8)
    m.train(); m(x)
    assert m.stats()["dropped"] == 6
    m.eval(); m(x)
    assert m.stats()["dropped"] == 0 and m.stats()["capacity"] == -1


@pytest.mark.parametrize("kwargs,needle", [
    (dict(d_model=0), "d_model must be > 0, got 0"),
    (dict(d_hidden=-1), "d_hidden must be > 0, got -1"),
    (dict(top_k=5), "top_k must be in [1, num_experts=4], got 5"),
    (dict(top_k=0), "top_k must be in [1, num_experts=4], got 0"),
    (dict(activation="tanh"), 'activation must be one of gelu, relu, silu, got "tanh"'),
    (dict(noisy_gate_policy="Gaussian"), "noisy_gate_policy must be one of none, Jitter, RSample"),
    (dict(min_capacity=-1), "min_capacity must be >= 0"),
])
def test_bad_options(kwargs, needle):
    args = dict(d_model=8, d_hidden=12, num_experts=4)
    args.update(kwargs)
    with pytest.raises(RuntimeError) as err:
        dynamoe.MoE(**args)
    assert needle in str(err.value)


def test_bad_inputs():
    m = dynamoe.MoE(8, 12, 4, name="layer3")
    with pytest.raises(RuntimeError, match=r"layer3: x must have shape \[\.\.\., d_model=8\], got \[5, 7\]"):
        m(torch.randn(5, 7))
    with pytest.raises(RuntimeError, match="layer3: x must be float32, float64 or bfloat16, got Long"):
        m(torch.ones(5, 8, dtype=torch.long))
    with pytest.raises(RuntimeError, match=r"layer3: x has dtype Double but w1 has dtype Float; convert the layer"):
        m(torch.randn(5, 8, dtype=torch.float64))


def test_float16_is_rejected_on_cpu_with_a_clear_error():
    """README: fp16 is accepted on CUDA only (torch 1.13 has no CPU half GEMM)."""
    m = dynamoe.MoE(8, 12, 4, name="half_layer").half()
    with pytest.raises(RuntimeError, match=r"half_layer: x must be float32, float64 or bfloat16, got Half$"):
        m(torch.randn(5, 8).half())
    ops = torch.ops.dynamoe
    x, pos = torch.randn(6, 8).half(), torch.zeros(6, 1, dtype=torch.long)
    with pytest.raises(RuntimeError, match=r"route: x must be float32, float64 or bfloat16 \(float16 on CUDA\), got Half"):
        ops.route(x, m.gate.weight, None, 2, 0.0, 1, True, False, 0, 0, "none", 0.01, True, False, "t")
    with pytest.raises(RuntimeError, match=r"dispatch: x must be .* \(float16 on CUDA\), got Half"):
        ops.dispatch(x, pos)
    with pytest.raises(RuntimeError, match=r"expert_ffn: rows must be .* \(float16 on CUDA\), got Half"):
        ops.expert_ffn(x, torch.tensor([6, 0, 0, 0]), m.w1, m.w2, None, None, None, "gelu")


def test_non_finite_logits_name_layer_and_rows():
    m = dynamoe.MoE(8, 12, 4, name="block7.moe")
    x = torch.randn(10, 8)
    x[3, 0] = float("nan")
    x[8, 2] = float("inf")
    with pytest.raises(RuntimeError, match=r"block7\.moe: 2 of 10 rows of router logits are not finite"):
        m(x)
    m2 = dynamoe.MoE(8, 12, 4, check_finite=False)
    assert m2(x).shape == x.shape  # opt-out: no error, no crash


def run_python(code, **env):
    full_env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), **env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120)


def test_bad_env_value_names_variable_value_and_accepted():
    r = run_python("import dynamoe; dynamoe.MoE(8, 12, 4)", DYNAMOE_PLACEMENT="bogus")
    assert r.returncode != 0
    assert 'DYNAMOE_PLACEMENT="bogus" is invalid: expected one of none, fastermoe, adaptive, eplb' in r.stderr
    r = run_python("import dynamoe; dynamoe.MoE(8, 12, 4)", DYNAMOE_GROUP_SIZE="0")
    assert 'DYNAMOE_GROUP_SIZE="0" is invalid: expected an integer in [1, 65536]' in r.stderr


def test_unknown_env_name_warns_with_closest_and_aliases_apply():
    r = run_python("import dynamoe; dynamoe.MoE(8, 12, 4); print(dynamoe.config())",
                   DYNAMOE_PLACMENT="adaptive", FMOE_FASTER_SHADOW_ENABLE="1", FMOE_FASTER_GROUP_SIZE="2",
                   DYNAMOE_LOG_LEVEL="info")
    assert r.returncode == 0, r.stderr
    assert "unknown variable DYNAMOE_PLACMENT is ignored; did you mean DYNAMOE_PLACEMENT?" in r.stderr
    assert "DYNAMOE_PLACEMENT=fastermoe" in r.stdout and "DYNAMOE_GROUP_SIZE=2" in r.stdout
    assert "configuration " in r.stderr  # logged once at start-up


def test_config_hash_changes_with_shared_settings_only():
    base = run_python("import dynamoe; print(dynamoe.config_hash())").stdout
    trace = run_python("import dynamoe; print(dynamoe.config_hash())", DYNAMOE_TRACE="/tmp/x").stdout
    sched = run_python("import dynamoe; print(dynamoe.config_hash())", DYNAMOE_SCHEDULE="overlap").stdout
    assert base and base == trace and base != sched


class Expert(torch.nn.Module):
    def __init__(self, w1, w2):
        super().__init__()
        self.w1, self.w2 = torch.nn.Parameter(w1.clone()), torch.nn.Parameter(w2.clone())

    def forward(self, x):
        return torch.nn.functional.gelu(x @ self.w1) @ self.w2


def test_custom_experts_match_builtin():
    torch.manual_seed(2)
    m = dynamoe.MoE(8, 12, 4, top_k=2, capacity_factor=1.0)
    c = dynamoe.MoE(8, 12, 4, top_k=2, capacity_factor=1.0, expert=lambda e: Expert(m.w1[e].detach(), m.w2[e].detach()))
    c.gate.weight.data.copy_(m.gate.weight.data)
    x = torch.randn(30, 8, requires_grad=True)
    xc = x.detach().clone().requires_grad_(True)
    y, yc = m(x), c(xc)
    # The built-in CPU experts run one ATen GEMM per expert on the same row slices
    # as x @ w1 in the module, forward and backward: identical, not merely close.
    torch.testing.assert_close(y, yc, rtol=0, atol=0)
    (y.sum() + m.aux_loss).backward()
    (yc.sum() + c.aux_loss).backward()
    torch.testing.assert_close(x.grad, xc.grad, rtol=0, atol=0)
    for e in range(4):
        torch.testing.assert_close(m.w1.grad[e], c.experts[e].w1.grad, rtol=0, atol=0)
        torch.testing.assert_close(m.w2.grad[e], c.experts[e].w2.grad, rtol=0, atol=0)
    assert c.stats()["counts"].tolist() == m.stats()["counts"].tolist()
    # One C++ step for both: the custom modules run between its dispatch and its combine.
    assert set(c.stats()["phase_seconds"]) == set(m.stats()["phase_seconds"])
    assert c.stats()["phase_seconds"]["experts"] > 0


def test_custom_expert_with_a_wrong_shape_is_named():
    m = dynamoe.MoE(8, 12, 4, top_k=1, capacity_factor=0.0, name="bad_expert",
                    expert=lambda e: torch.nn.Linear(8, 7 if e == 2 else 8))
    torch.manual_seed(0)
    with torch.no_grad():  # every token to expert 2
        m.gate.weight.zero_()
        m.gate.weight[2].fill_(1.0)
    with pytest.raises(RuntimeError, match=r"bad_expert: custom expert 2 must return shape \[5, 8\], got \[5, 7\]"):
        m(torch.ones(5, 8))


def test_residual_moe_mixes_dense_mlp():
    torch.manual_seed(4)
    m = dynamoe.MoE(8, 12, 4, use_residual=True)
    plain = dynamoe.MoE(8, 12, 4)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("residual")})
    x = torch.randn(9, 8)
    coef = torch.softmax(m.residual_coef(x), -1)
    mlp = m.residual_fc2(torch.nn.functional.gelu(m.residual_fc1(x)))
    torch.testing.assert_close(m(x), plain(x) * coef[:, :1] + mlp * coef[:, 1:])


@pytest.mark.parametrize("policy", ["Jitter", "RSample"])
def test_noisy_gating_in_training_only(policy):
    torch.manual_seed(6)
    m = dynamoe.MoE(8, 12, 8, top_k=1, noisy_gate_policy=policy, jitter_eps=0.5)
    x = torch.randn(200, 8)
    m.eval()
    y0, y1 = m(x), m(x)
    assert torch.equal(y0, y1)
    quiet = dynamoe.MoE(8, 12, 8, top_k=1)
    quiet.load_state_dict(m.state_dict())
    quiet.eval()
    assert torch.equal(quiet(x), y0)
    m.train()
    assert not torch.equal(m(x), m(x))


def test_aux_loss_free_bias_steers_selection_and_updates():
    m = identity_gate_layer(top_k=1, bias_update_rate=0.1)
    x = torch.tensor([[1.0, 0, 0, 0]] * 8)
    m(x)  # all to expert 0: its bias goes down, the others go up
    assert torch.allclose(m.expert_bias, torch.tensor([-0.1, 0.1, 0.1, 0.1]))
    with torch.no_grad():
        m.expert_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    m.eval()
    m(x)
    assert m.stats()["counts"].tolist() == [[0, 0, 0, 8]]
    assert torch.allclose(m.expert_bias, torch.tensor([0.0, 0.0, 0.0, 1.0]))  # no update in eval


def test_z_loss_weight():
    torch.manual_seed(8)
    m = dynamoe.MoE(8, 12, 4, z_loss_weight=0.5, balance_loss_weight=0.25)
    x = torch.randn(16, 8)
    m(x)
    z = torch.logsumexp(x @ m.gate.weight.t(), -1).pow(2).mean()
    torch.testing.assert_close(m.stats()["z_loss"], z.item(), rtol=1e-5, atol=1e-6)
    # The balance loss from the README's formula, in float64: E * sum_e mean score_e *
    # routed_e / (T * k), routed_e counting both top-2 choices.
    scores = torch.softmax(x.double() @ m.gate.weight.double().t(), -1)
    routed = torch.bincount(scores.topk(2, dim=1).indices.flatten(), minlength=4).double()
    balance = (4 * scores.mean(0) * routed / (16 * 2)).sum().item()
    assert abs(balance - z.item()) > 0.1  # swapping the two weights would be caught
    # fp32 softmax and sums against float64: a few fp32 ulps of values near 1
    torch.testing.assert_close(m.stats()["balance_loss"], balance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.aux_loss.item(), 0.25 * balance + 0.5 * z.item(), rtol=1e-5, atol=1e-6)
