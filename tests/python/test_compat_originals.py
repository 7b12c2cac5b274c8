"""The adapters against the originals' own semantics: each reference below is
written from the original library's gate and layer code (DeepSpeed's
top1gating/top2gating in ../shared/seeds/000, FastMoE's fmoe/gates/*.py,
Tutel's fast_dispatch.extract_critical and losses.gshard_loss), per token in
float64, and the adapter loads a checkpoint in the original's state_dict
layout (strict=True). Capacity is set so that tokens are dropped, except where
a dropless mode (DeepSpeed's drop_tokens=False, Tutel's factor 0 or under its
negative bound) is checked under skew. Outputs, losses and the gradients of the
input and of every parameter are compared."""
import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from dynamoe.compat import deepspeed, fastmoe, tutel

D, H, E = 6, 10, 4


def _skewed_tokens(n, gate_weight, hot, strength=0.8):
    """Tokens whose router logits favour expert `hot`, so capacity drops some."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    return x + strength * gate_weight[hot] / gate_weight[hot].norm()


def _positions(choices, capacity):
    """Slot of each (token, choice) in its expert's buffer: first choices in token
    order, then second choices after every first choice (DeepSpeed's and Tutel's
    cumsum over the one-hot masks); -1 beyond capacity."""
    t, k = choices.shape
    base = torch.zeros(E, dtype=torch.long)
    pos = torch.full((t, k), -1, dtype=torch.long)
    for j in range(k):
        for i in range(t):
            e = int(choices[i, j])
            if base[e] < capacity:
                pos[i, j] = base[e]
            base[e] += 1
    return pos


def _ffn(x, w1, b1, w2, b2, act):
    return act(x @ w1 + b1) @ w2 + b2


def _kept_by_priority(first, capacity, priority):
    """top1gating with RTS: per expert, the `capacity` routed tokens with the
    highest uniform draw (mask1 * uniform, then topk over tokens); slots by token."""
    keep = torch.zeros(first.shape[0], dtype=torch.bool)
    for e in range(E):
        tokens = [i for i in range(first.shape[0]) if int(first[i]) == e]
        keep[sorted(tokens, key=lambda i: -priority(i))[:capacity]] = True
    return torch.where(keep, (torch.cumsum(F.one_hot(first, E) * keep[:, None], 0) - 1).gather(1, first[:, None])[:, 0],
                       torch.tensor(-1))[:, None]


def _deepspeed_reference(x, wg, experts, k, capacity_factor, min_capacity, drop_tokens=True, priority=None):
    """top1gating (no noise; RTS when `priority` gives each token's draw) /
    top2gating (zero Gumbel noise) and MOELayer's combine, token by token."""
    gates = F.softmax(x @ wg.t(), dim=1)
    t = x.shape[0]
    capacity = max(min_capacity, math.ceil(t / E * capacity_factor * k))
    first = gates.argmax(1)
    choices = first[:, None]
    if k == 2:
        choices = torch.stack([first, gates.masked_fill(F.one_hot(first, E).bool(), -1).argmax(1)], 1)
    if not drop_tokens:  # top1gating: capacity = the largest expert count (all-reduced): nothing drops
        capacity = int(torch.bincount(choices.flatten(), minlength=E).max())
    pos = _positions(choices, capacity) if priority is None else _kept_by_priority(first, capacity, priority)
    g = gates.gather(1, choices) * (pos >= 0)
    if k == 2:  # renormalised over the kept gates
        g = g / g.sum(1, keepdim=True).clamp(min=torch.finfo(g.dtype).eps)
    me, ce = gates.mean(0), F.one_hot(first, E).double().mean(0)
    l_aux = (me * ce).mean() * E * E if k == 2 else (me * ce).sum() * E
    y = torch.zeros_like(x)
    for i in range(t):
        for j in range(k):
            if pos[i, j] >= 0:
                y[i] = y[i] + g[i, j] * experts[int(choices[i, j])](x[i])
    return y, l_aux, int((pos < 0).sum())


def _deepspeed_layer_and_checkpoint(k, **kw):
    torch.manual_seed(0)
    expert = nn.Sequential(nn.Linear(D, H), nn.GELU(), nn.Linear(H, D))
    layer = deepspeed.MoE(D, expert, num_experts=E, k=k, **kw).double()
    # A DeepSpeed checkpoint: its own keys, experts as nn.Sequential(Linear, GELU, Linear).
    sd = {"deepspeed_moe.gate.wg.weight": torch.randn(E, D, dtype=torch.float64)}
    for e in range(E):
        for j, shape in ((0, (H, D)), (2, (D, H))):
            sd[f"deepspeed_moe.experts.deepspeed_experts.{e}.{j}.weight"] = torch.randn(*shape, dtype=torch.float64)
            sd[f"deepspeed_moe.experts.deepspeed_experts.{e}.{j}.bias"] = torch.randn(shape[0], dtype=torch.float64)
    layer.load_state_dict(dict(sd), strict=True)
    sd = {n: v.requires_grad_() for n, v in sd.items()}  # the reference's parameters
    return layer, sd


def _check_deepspeed(layer, sd, x, k, cf, min_capacity, **ref_kw):
    """Output, l_aux, exp_counts and every gradient (x, router, experts) against
    the reference; returns the reference's dropped count and output."""
    ex = "deepspeed_moe.experts.deepspeed_experts."
    experts = [lambda v, e=e: _ffn(v, sd[f"{ex}{e}.0.weight"].t(), sd[f"{ex}{e}.0.bias"], sd[f"{ex}{e}.2.weight"].t(),
                                   sd[f"{ex}{e}.2.bias"], F.gelu) for e in range(E)]
    wg = sd["deepspeed_moe.gate.wg.weight"]
    for v in sd.values():
        v.grad = None
    xr, xa = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, aux_ref, dropped = _deepspeed_reference(xr, wg, experts, k, cf, min_capacity, **ref_kw)
    y, aux, exp_counts = layer(xa)
    # float64 on both sides, the same formulas summed in another order: 1e-12 is ~1e3 ulps of
    # values near 1, far below any change of a routing or weighting decision.
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(aux.double(), aux_ref, rtol=0, atol=1e-12)
    assert exp_counts.tolist() == torch.bincount((x @ wg.t()).argmax(1), minlength=E).tolist()
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ((y_ref * gy).sum() + aux_ref).backward()
    layer.zero_grad()
    ((y * gy).sum() + aux).backward()
    torch.testing.assert_close(xa.grad, xr.grad, rtol=0, atol=1e-12)
    moe = layer.moe
    torch.testing.assert_close(moe.gate.weight.grad, wg.grad, rtol=0, atol=1e-12)
    for e in range(E):
        for mine, theirs, transpose in ((moe.w1, "0.weight", True), (moe.b1, "0.bias", False),
                                        (moe.w2, "2.weight", True), (moe.b2, "2.bias", False)):
            p = sd[ex + f"{e}.{theirs}"]
            ref = p.grad if p.grad is not None else torch.zeros_like(p)  # an expert no kept token reached
            torch.testing.assert_close(mine.grad[e], ref.t() if transpose else ref, rtol=0, atol=1e-12,
                                       msg=f"expert {e} {theirs}")
    return dropped, y_ref.detach()


@pytest.mark.parametrize("k", [1, 2])
def test_deepspeed_adapter_is_deepspeeds_gate_with_drops(k):
    layer, sd = _deepspeed_layer_and_checkpoint(k, capacity_factor=0.5, min_capacity=2, use_rts=False)
    x = _skewed_tokens(24, sd["deepspeed_moe.gate.wg.weight"].detach(), hot=1)
    dropped, _ = _check_deepspeed(layer, sd, x, k, 0.5, 2)
    assert dropped > 0  # the case exercises renormalisation after drops


@pytest.mark.parametrize("k", [1, 2])
def test_deepspeed_drop_tokens_false_drops_nothing_at_a_tiny_capacity(k):
    """README: drop_tokens=False is dropless (top1gating: capacity = max(exp_counts))."""
    layer, sd = _deepspeed_layer_and_checkpoint(k, capacity_factor=0.01, min_capacity=0, drop_tokens=False,
                                                use_rts=False)
    x = _skewed_tokens(24, sd["deepspeed_moe.gate.wg.weight"].detach(), hot=1)
    assert _check_deepspeed(layer, sd, x, k, 0.01, 0, drop_tokens=False)[0] == 0
    assert layer.moe.stats()["dropped"] == 0
    dropping, _ = _deepspeed_layer_and_checkpoint(k, capacity_factor=0.01, min_capacity=0, use_rts=False)
    dropping.load_state_dict(layer.state_dict())
    dropping(x)
    assert dropping.moe.stats()["dropped"] > 0  # the same capacity with drop_tokens=True drops


def test_deepspeed_rts_keeps_the_highest_draws_each_step():
    """DeepSpeed's default use_rts=True (top-1): each expert keeps the capacity tokens
    with the highest uniform draw, drawn anew each call; dynamoe's draw is the seeded
    priority of (rts_seed=0, step, token). Two training steps, each its own draws."""
    import reference
    layer, sd = _deepspeed_layer_and_checkpoint(1, capacity_factor=0.5, min_capacity=2)
    x = _skewed_tokens(24, sd["deepspeed_moe.gate.wg.weight"].detach(), hot=1)
    outputs = []
    for step in (0, 1):
        assert layer.moe.step == step  # each training forward is a step
        dropped, y = _check_deepspeed(layer, sd, x, 1, 0.5, 2,
                                      priority=lambda t, step=step: reference.rts_priority(0, step, t, 0))
        assert dropped > 0
        outputs.append(y)
    # The fixture tells RTS from token order and step 0 from step 1.
    ex = "deepspeed_moe.experts.deepspeed_experts."
    experts = [lambda v, e=e: _ffn(v, sd[f"{ex}{e}.0.weight"].t(), sd[f"{ex}{e}.0.bias"], sd[f"{ex}{e}.2.weight"].t(),
                                   sd[f"{ex}{e}.2.bias"], F.gelu) for e in range(E)]
    by_token, _, _ = _deepspeed_reference(x, sd["deepspeed_moe.gate.wg.weight"], experts, 1, 0.5, 2)
    assert (by_token - outputs[0]).abs().max() > 1e-3 and (outputs[1] - outputs[0]).abs().max() > 1e-3


def test_deepspeed_custom_expert_module_runs_per_expert_like_deepspeed():
    """Any other expert module: deep-copied into every expert (DeepSpeed's Experts), each
    token's output its gate times its expert's, top1gating with the default use_rts=True."""
    import reference
    torch.manual_seed(1)
    expert = nn.Linear(D, D).double()
    layer = deepspeed.MoE(D, expert, num_experts=E, k=1, capacity_factor=0.5, min_capacity=2).double()
    copies = list(layer.moe.experts)
    assert len({id(c) for c in copies}) == E and all(c is not expert for c in copies)
    for c in copies:
        torch.testing.assert_close(c.weight, expert.weight, rtol=0, atol=0)
    with torch.no_grad():  # make the experts differ, so a wrong expert index shows
        for e, c in enumerate(copies):
            c.weight.add_(0.5 * e)
    wg = layer.moe.gate.weight.detach()
    x = _skewed_tokens(24, wg, hot=2)
    refs = []
    for step in (0, 1):  # the per-expert path draws anew each step too
        y_ref, aux_ref, dropped = _deepspeed_reference(x, wg, [lambda v, c=c: c(v) for c in copies], 1, 0.5, 2,
                                                       priority=lambda t, s=step: reference.rts_priority(0, s, t, 0))
        assert dropped > 0
        y, aux, _ = layer(x)
        torch.testing.assert_close(y, y_ref.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(aux.double(), aux_ref.detach(), rtol=0, atol=1e-12)
        refs.append(y_ref.detach())
    assert (refs[0] - refs[1]).abs().max() > 1e-3  # the two steps' draws keep different tokens


def _fastmoe_checkpoint(fused, g):
    sd = {"gate.gate.weight": torch.randn(E, D, generator=g, dtype=torch.float64),
          "gate.gate.bias": torch.randn(E, generator=g, dtype=torch.float64)}
    parts = {"htoh4.weight": (E, H, D), "htoh4.bias": (E, H), "h4toh.weight": (E, D, H), "h4toh.bias": (E, D)}
    for name, shape in parts.items():
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        if fused:
            sd["experts." + name] = t
        else:  # one FMoELinear(1, ...) per expert
            for e in range(E):
                sd[f"experts.{e}.{name}"] = t[e:e + 1].clone()
    return sd


def _fastmoe_expert(sd, e, act, fused):
    get = (lambda n: sd["experts." + n][e]) if fused else (lambda n: sd[f"experts.{e}.{n}"][0])
    return lambda v: _ffn(v, get("htoh4.weight").t(), get("htoh4.bias"), get("h4toh.weight").t(),
                          get("h4toh.bias"), act)


def _grad(t):
    return t.grad if t.grad is not None else torch.zeros_like(t)  # a parameter no kept token reached


def _fastmoe_ref_grads(sd, fused):
    """The reference's gradients in the adapter's layout (w1/w2 are FastMoE's weights transposed)."""
    def stacked(n):
        return _grad(sd["experts." + n]) if fused else torch.cat([_grad(sd[f"experts.{e}.{n}"]) for e in range(E)])
    return {"gate.weight": _grad(sd["gate.gate.weight"]), "gate.bias": _grad(sd["gate.gate.bias"]),
            "w1": stacked("htoh4.weight").transpose(1, 2), "b1": stacked("htoh4.bias"),
            "w2": stacked("h4toh.weight").transpose(1, 2), "b2": stacked("h4toh.bias")}


def _tutel_ref_grads(sd):
    return {"gate.weight": _grad(sd["gates.0.wg.weight"]), "w1": _grad(sd["experts.batched_fc1_w"]).transpose(1, 2),
            "w2": _grad(sd["experts.batched_fc2_w"]), "b1": _grad(sd["experts.batched_fc1_bias"]),
            "b2": _grad(sd["experts.batched_fc2_bias"])}


def _assert_gradients_match(layer, loss, loss_ref, xa, xr, ref_grads):
    """Backward through both; the input's and every parameter's gradient agree.
    float64 on both sides, same formulas in another order: 1e-12 (see above)."""
    loss_ref.backward()
    layer.zero_grad()
    loss.backward()
    torch.testing.assert_close(xa.grad, xr.grad, rtol=0, atol=1e-12)
    mine = dict(layer.moe.named_parameters())
    ref = ref_grads()
    assert set(ref) == set(mine)  # every parameter is checked
    for n, g in ref.items():
        torch.testing.assert_close(mine[n].grad, g, rtol=0, atol=1e-12, msg=f"gradient of {n}")


def _leaves(sd):
    return {n: (v.requires_grad_() if v.is_floating_point() else v) for n, v in sd.items()}


@pytest.mark.parametrize("fused", [True, False])
def test_fastmoe_naive_gate_has_a_router_bias_and_loads_fastmoe_checkpoints(fused):
    g = torch.Generator().manual_seed(1)
    sd = _fastmoe_checkpoint(fused, g)
    layer = fastmoe.FMoETransformerMLP(num_expert=E, d_model=D, d_hidden=H, world_size=1, top_k=2).double()
    assert layer.moe.gate.bias is not None
    layer.load_state_dict(dict(sd), strict=True)
    sd = _leaves(sd)
    x = torch.randn(17, D, generator=g, dtype=torch.float64)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    # NaiveGate: top-k of Linear(d_model, E) with bias; weights softmax over the k logits.
    logits = xr @ sd["gate.gate.weight"].t() + sd["gate.gate.bias"]
    val, idx = logits.topk(2, dim=1)
    w = F.softmax(val, dim=1)
    y_ref = torch.stack([sum(w[i, j] * _fastmoe_expert(sd, int(idx[i, j]), F.gelu, fused)(xr[i]) for j in range(2))
                         for i in range(17)])
    y = layer(xa)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    gy = torch.randn(17, D, generator=g, dtype=torch.float64)
    _assert_gradients_match(layer, (y * gy).sum(), (y_ref * gy).sum(), xa, xr, lambda: _fastmoe_ref_grads(sd, fused))


def test_fastmoe_gshard_gate_loss_and_capacity_are_fastmoes():
    g = torch.Generator().manual_seed(2)
    sd = _fastmoe_checkpoint(True, g)
    layer = fastmoe.FMoETransformerMLP(num_expert=E, d_model=D, d_hidden=H, world_size=1, activation=nn.ReLU(),
                                       gate=lambda d, n, w, k: fastmoe.GShardGate(d, n, w, random_routing=False))
    layer.double().load_state_dict(dict(sd), strict=True)
    sd = _leaves(sd)
    x = torch.randn(30, D, generator=g, dtype=torch.float64)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    logits = xr @ sd["gate.gate.weight"].t() + sd["gate.gate.bias"]
    val, idx = logits.topk(2, dim=1)
    # loss = mean(c_e * m_e) * num_expert**2, c_e over first choices / S, m_e the mean softmax.
    c_e = torch.bincount(idx[:, 0], minlength=E).double() / 30
    loss_ref = (c_e * F.softmax(logits, 1).mean(0)).mean() * E ** 2
    w = F.softmax(val, dim=1)
    y_ref = torch.stack([sum(w[i, j] * _fastmoe_expert(sd, int(idx[i, j]), F.relu, True)(xr[i]) for j in range(2))
                         for i in range(30)])
    y = layer(xa)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    loss = layer.gate.get_loss()
    torch.testing.assert_close(loss.double(), loss_ref, rtol=0, atol=1e-12)
    # capacity ceil(1.2 * T) per expert: at least T (dynamoe clamps it to T), so nothing is dropped
    assert layer.moe.stats()["capacity"] == min(math.ceil(1.2 * 30), 30) and layer.moe.stats()["dropped"] == 0
    gy = torch.randn(30, D, generator=g, dtype=torch.float64)
    _assert_gradients_match(layer, (y * gy).sum() + loss, (y_ref * gy).sum() + loss_ref, xa, xr,
                            lambda: _fastmoe_ref_grads(sd, True))


def test_fastmoe_switch_gate_drops_in_token_order_with_the_softmax_weight():
    g = torch.Generator().manual_seed(4)
    sd = _fastmoe_checkpoint(True, g)
    gate = lambda d, n, w, k: fastmoe.SwitchGate(d, n, w, switch_eps=0.0, capacity=(0.5, 0.5))  # noqa: E731
    layer = fastmoe.FMoETransformerMLP(num_expert=E, d_model=D, d_hidden=H, world_size=1, gate=gate).double()
    layer.load_state_dict(dict(sd), strict=True)
    x = _skewed_tokens(24, sd["gate.gate.weight"], hot=2)
    sd = _leaves(sd)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    score = F.softmax(xr @ sd["gate.gate.weight"].t() + sd["gate.gate.bias"], dim=1)
    top1 = score.argmax(1)
    capacity = math.ceil(0.5 * 24 / E)  # ceil(cap_rate * T / num_expert)
    pos = _positions(top1[:, None], capacity)[:, 0]
    assert int((pos < 0).sum()) > 0
    y_ref = torch.stack([score[i, top1[i]] * _fastmoe_expert(sd, int(top1[i]), F.gelu, True)(xr[i])
                         if pos[i] >= 0 else torch.zeros(D, dtype=torch.float64) for i in range(24)])
    y = layer(xa)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    # The output's gradients only: FastMoE's Switch loss counts kept tokens where dynamoe
    # counts routed ones (README, remaining differences).
    gy = torch.randn(24, D, generator=g, dtype=torch.float64)
    _assert_gradients_match(layer, (y * gy).sum(), (y_ref * gy).sum(), xa, xr, lambda: _fastmoe_ref_grads(sd, True))


def test_fastmoe_custom_expert_with_switch_gate_in_eval():
    """FMoE(expert=fn) builds fn(d_model) per expert; SwitchGate in eval: no noise,
    the eval capacity 2.4 (ceil(f * T / num_expert)), the softmax weight of the top-1."""
    torch.manual_seed(2)
    layer = fastmoe.FMoE(num_expert=E, d_model=D, top_k=1, gate=fastmoe.SwitchGate,
                         expert=lambda d: nn.Linear(d, d)).double().eval()
    assert len(layer.moe.experts) == E and isinstance(layer.moe.experts[0], nn.Linear)
    gate = layer.moe.gate  # FastMoE's gate.gate: Linear with bias
    x = _skewed_tokens(24, gate.weight.detach(), hot=1, strength=4.0)
    score = F.softmax(gate(x), dim=1).detach()
    top1 = score.argmax(1)
    pos = _positions(top1[:, None], math.ceil(2.4 * 24 / E))[:, 0]
    assert int((pos < 0).sum()) > 0
    y_ref = torch.stack([score[i, top1[i]] * layer.moe.experts[int(top1[i])](x[i]) if pos[i] >= 0
                         else torch.zeros(D, dtype=torch.float64) for i in range(24)])
    torch.testing.assert_close(layer(x), y_ref.detach(), rtol=0, atol=1e-12)


def _tutel_layer(k, capacity_factor, seed):
    g = torch.Generator().manual_seed(seed)
    layer = tutel.moe_layer(gate_type={"type": "top", "k": k, "capacity_factor": capacity_factor}, model_dim=D,
                            experts={"type": "ffn", "count_per_node": E, "hidden_size_per_expert": H}).double()
    sd = {"gates.0.wg.weight": torch.randn(E, D, generator=g, dtype=torch.float64),
          "experts.batched_fc1_w": torch.randn(E, H, D, generator=g, dtype=torch.float64),
          "experts.batched_fc2_w": torch.randn(E, H, D, generator=g, dtype=torch.float64),
          "experts.batched_fc1_bias": torch.randn(E, H, generator=g, dtype=torch.float64),
          "experts.batched_fc2_bias": torch.randn(E, D, generator=g, dtype=torch.float64),
          "_num_global_experts": torch.tensor(E)}  # Tutel's MOELayer buffer
    layer.load_state_dict(dict(sd), strict=True)
    return layer, _leaves(sd)


def _tutel_reference(xt, sd, k, capacity):
    """extract_critical + gshard_loss, token by token: normalize_gate before
    capacity, first choices claim slots first; capacity None is dropless."""
    t = xt.shape[0]
    scores = F.softmax(xt @ sd["gates.0.wg.weight"].t(), dim=1)
    idx = scores.topk(k, dim=1).indices
    gates = scores.gather(1, idx)
    gates = gates / gates.sum(1, keepdim=True)  # normalize_gate, before capacity
    pos = _positions(idx, t * k if capacity is None else capacity)
    expert = lambda e, v: _ffn(v, sd["experts.batched_fc1_w"][e].t(), sd["experts.batched_fc1_bias"][e],  # noqa
                               sd["experts.batched_fc2_w"][e], sd["experts.batched_fc2_bias"][e], F.relu)
    zero = torch.zeros(D, dtype=torch.float64)
    y = torch.stack([sum((gates[i, j] * expert(int(idx[i, j]), xt[i]) if pos[i, j] >= 0 else zero)
                         for j in range(k)) for i in range(t)])
    # gshard_loss: E / T^2 * sum_e (sum of scores) * (first-choice count)
    loss = (scores.sum(0) * torch.bincount(idx[:, 0], minlength=E).double()).sum() * E / t ** 2
    return y, loss, int((pos < 0).sum()), torch.bincount(idx.flatten(), minlength=E)


def test_tutel_defaults_capacity_and_loss_are_tutels():
    layer, sd = _tutel_layer(2, 0.5, 5)
    x = _skewed_tokens(26, sd["gates.0.wg.weight"].detach(), hot=0).reshape(2, 13, D)
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    capacity = 2 * int(0.5 * math.ceil(26 / E))  # top_k * int(cf * ceil(T / E))
    y_ref, loss_ref, dropped, _ = _tutel_reference(xr.reshape(-1, D), sd, 2, capacity)
    assert dropped > 0
    y = layer(xa)
    torch.testing.assert_close(y.reshape(-1, D), y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(y.l_aux.double(), loss_ref, rtol=0, atol=1e-12)
    assert layer.moe.stats()["capacity"] == capacity and layer.moe.stats()["dropped"] == dropped
    gy = torch.randn(26, D, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    _assert_gradients_match(layer, (y.reshape(-1, D) * gy).sum() + y.l_aux, (y_ref * gy).sum() + loss_ref, xa, xr,
                            lambda: _tutel_ref_grads(sd))
    # Tutel's own defaults: top-1, relu experts.
    plain = tutel.moe_layer(gate_type={"type": "top"}, model_dim=D,
                            experts={"type": "ffn", "count_per_node": E, "hidden_size_per_expert": H})
    assert plain.moe.top_k == 1 and plain.moe.activation == "relu"


def test_tutel_zero_capacity_factor_is_dropless():
    """Tutel: capacity_factor 0 sizes the capacity to max(needed): nothing drops, however skewed."""
    layer, sd = _tutel_layer(2, 0.0, 7)
    x = _skewed_tokens(24, sd["gates.0.wg.weight"].detach(), hot=3, strength=4.0)
    _, _, _, needed = _tutel_reference(x, sd, 2, None)
    assert int(needed.max()) > 2 * int(1.0 * math.ceil(24 / E))  # Tutel's default factor 1.0 would drop
    y_ref, loss_ref, dropped, _ = _tutel_reference(x, sd, 2, None)
    y = layer(x)
    assert dropped == 0 and layer.moe.stats()["dropped"] == 0
    torch.testing.assert_close(y, y_ref.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(y.l_aux.double(), loss_ref.detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("skewed", [True, False])
def test_tutel_negative_capacity_is_dropless_up_to_the_bound(skewed):
    """Tutel's README: capacity_factor -X gives min(X-capacity, max needed): the
    X-capacity's drops where an expert needs more, none where every expert fits."""
    layer, sd = _tutel_layer(2, -1.5, 7)
    wg = sd["gates.0.wg.weight"].detach()
    x = _skewed_tokens(24, wg, hot=3, strength=4.0) if skewed else torch.randn(
        24, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    bound = 2 * int(1.5 * math.ceil(24 / E))  # top_k * int(X * ceil(T / E)) = 18
    _, _, _, needed = _tutel_reference(x, sd, 2, None)
    assert (int(needed.max()) > bound) == skewed  # the fixture is on the intended side of the bound
    xa, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, loss_ref, dropped, _ = _tutel_reference(xr, sd, 2, bound)
    assert (dropped > 0) == skewed
    y = layer(xa)
    assert layer.moe.stats()["dropped"] == dropped
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(y.l_aux.double(), loss_ref, rtol=0, atol=1e-12)
    _assert_gradients_match(layer, y.sum() + y.l_aux, y_ref.sum() + loss_ref, xa, xr, lambda: _tutel_ref_grads(sd))


def test_adapters_with_their_load_hooks_pickle_and_deep_copy():
    import copy
    import io
    layer = fastmoe.FMoETransformerMLP(num_expert=E, d_model=D, d_hidden=H, world_size=1).double()
    buf = io.BytesIO()
    torch.save(layer, buf)  # the load hook is a module-level function, not a closure
    buf.seek(0)
    kwargs = {"weights_only": False} if "weights_only" in torch.load.__code__.co_varnames else {}
    loaded = torch.load(buf, **kwargs)
    twin = copy.deepcopy(layer)
    sd = _fastmoe_checkpoint(True, torch.Generator().manual_seed(9))
    twin.load_state_dict(dict(sd), strict=True)  # the copy's hook fills the copy, not the original
    torch.testing.assert_close(twin.moe.gate.bias, sd["gate.gate.bias"], rtol=0, atol=0)
    assert not torch.equal(layer.moe.gate.bias, sd["gate.gate.bias"])
    loaded.load_state_dict(dict(sd), strict=True)
    torch.testing.assert_close(loaded.moe.w1, sd["experts.htoh4.weight"].transpose(1, 2), rtol=0, atol=0)


def test_deepspeed_residual_with_a_bias_free_expert_loads():
    expert = nn.Sequential(nn.Linear(D, H, bias=False), nn.ReLU(), nn.Linear(H, D, bias=False))
    layer = deepspeed.MoE(D, expert, num_experts=E, k=1, use_residual=True)
    sd = {"deepspeed_moe.gate.wg.weight": torch.randn(E, D), "coefficient.weight": torch.randn(2, D),
          "coefficient.bias": torch.randn(2), "mlp.0.weight": torch.randn(H, D), "mlp.2.weight": torch.randn(D, H)}
    for e in range(E):
        sd[f"deepspeed_moe.experts.deepspeed_experts.{e}.0.weight"] = torch.randn(H, D)
        sd[f"deepspeed_moe.experts.deepspeed_experts.{e}.2.weight"] = torch.randn(D, H)
    layer.load_state_dict(dict(sd), strict=True)
    assert torch.count_nonzero(layer.moe.residual_fc1.bias) == 0
    torch.testing.assert_close(layer.moe.residual_fc2.weight, sd["mlp.2.weight"], rtol=0, atol=0)
