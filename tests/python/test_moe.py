"""dynamoe.MoE against the naive reference: outputs and every gradient."""
import itertools

import pytest
import torch

import dynamoe
import reference


def params_of(m):
    return {k: getattr(m, k) for k in ("w1", "w2", "w3", "b1", "b2")}


# Layer vs reference, in units of eps(dtype) x max|reference| per tensor (about one
# ulp of the tensor's largest value). Only rounding differs: the layer's GEMMs sum
# in another order than the reference's per-token products, and in bf16 the
# reference also rounds every per-token product and every autograd accumulation to
# bf16 where the layer accumulates in fp32. Worst measured over this file's cases:
# fp32 2.5, fp64 5.0 (gate gradient, after cancellation), bf16 2.8.
ULPS = {torch.float32: 8, torch.float64: 8, torch.bfloat16: 4}


def assert_ulps(actual, ref, ulps, msg="", eps_of=None):
    """|actual - ref| <= ulps * eps * max|ref|, element by element (exact when ref is
    0); eps of ref's dtype unless eps_of names another."""
    assert actual.shape == ref.shape and actual.dtype == ref.dtype, msg
    if ref.numel() == 0:
        return
    bound = ulps * torch.finfo(eps_of or ref.dtype).eps * ref.detach().double().abs().max().item()
    worst = (actual.detach().double() - ref.detach().double()).abs().max().item()
    assert worst <= bound, f"{msg}: max |diff| {worst:.3g} > {ulps} eps x max|ref| = {bound:.3g}"


def check_against_reference(T, E, k, cf, dtype=torch.float32, gated=False, bias=False, activation="gelu",
                            lead_shape=None, normalize=None):
    torch.manual_seed(1000 * T + 10 * E + k)
    m = dynamoe.MoE(8, 12, E, top_k=k, capacity_factor=cf, min_capacity=2, gated=gated, bias=bias,
                    activation=activation, normalize_topk=normalize).to(dtype)
    shape = (lead_shape or (T,)) + (8,)
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    gy = torch.randn_like(y)
    (y * gy).sum().add(m.aux_loss).backward()

    xr = x.detach().reshape(-1, 8).clone().requires_grad_(True)
    ref_params = {k_: (v.detach().clone().requires_grad_(True) if v is not None else None)
                  for k_, v in params_of(m).items()}
    gate_w = m.gate.weight.detach().clone().requires_grad_(True)
    yr, balance, kept = reference.moe(xr, gate_w, ref_params, k, cf, 2, normalize, activation)
    (yr * gy.reshape(-1, 8)).sum().add(balance).backward()

    ulps = ULPS[dtype]
    assert_ulps(y.reshape(-1, 8), yr, ulps, "y")
    assert m.stats()["counts"].tolist() == [kept]
    # The router and its losses run in fp32 (fp64 for fp64 input) in both: a few
    # ulps of the loss (measured: 1 ulp).
    reps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    torch.testing.assert_close(m.aux_loss.double(), balance.double(), rtol=4 * reps, atol=4 * reps)
    assert_ulps(x.grad.reshape(-1, 8), xr.grad, ulps, "x.grad")
    assert_ulps(m.gate.weight.grad, gate_w.grad, ulps, "gate.weight.grad")
    for name, ref in ref_params.items():
        if ref is not None:
            assert_ulps(getattr(m, name).grad, ref.grad, ulps, name + ".grad")


GRID = [(T, E, k, cf) for T, E, k, cf in itertools.product([1, 7, 33], [1, 4, 6], [1, 2, 4],
                                                           [0.0, 1.0, 0.5, -0.75]) if k <= E]


@pytest.mark.parametrize("T,E,k,cf", GRID)
def test_matches_reference_fp32(T, E, k, cf):
    check_against_reference(T, E, k, cf)


@pytest.mark.parametrize("activation,gated,bias", [("gelu", True, True), ("relu", False, True),
                                                   ("silu", True, False), ("relu", True, True)])
@pytest.mark.parametrize("cf", [0.0, 1.0])
def test_expert_variants(activation, gated, bias, cf):
    check_against_reference(17, 4, 2, cf, gated=gated, bias=bias, activation=activation)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtypes(dtype):
    check_against_reference(21, 4, 2, 0.0, dtype=dtype, gated=True, bias=True)
    check_against_reference(21, 4, 2, 0.75, dtype=dtype)


def test_leading_dims_and_normalize_flag():
    check_against_reference(0, 4, 2, 0.0, lead_shape=(3, 5))
    check_against_reference(0, 4, 2, 1.0, lead_shape=(2, 2, 3), normalize=False)
    check_against_reference(0, 4, 1, 0.0, lead_shape=(9,), normalize=True)


def test_zero_tokens():
    m = dynamoe.MoE(8, 12, 4, top_k=2)
    x = torch.randn(0, 8, requires_grad=True)
    y = m(x)
    (y.sum() + m.aux_loss).backward()
    assert y.shape == (0, 8) and x.grad.shape == (0, 8)
    assert m.stats()["counts"].tolist() == [[0, 0, 0, 0]]


def test_gradcheck_double():
    """Finite differences vs the analytic gradients of x, the gate and every expert tensor."""
    torch.manual_seed(0)
    for cf, gated, act in ((0.0, True, "gelu"), (1.0, False, "silu"), (-1.0, True, "relu")):
        x = torch.randn(6, 4, dtype=torch.float64)
        gw = torch.randn(3, 4, dtype=torch.float64)
        w1, w2, w3 = (torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 5, 4, dtype=torch.float64),
                      torch.randn(3, 4, 5, dtype=torch.float64))
        b1, b2 = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
        if act == "relu":  # keep pre-activations away from the kink
            b1 = b1 + 0.5 * torch.sign(b1)

        dynamoe.load_library()
        # The runtime object dynamoe.MoE holds, driven directly: options once, tensors per call.
        layer = torch.classes.dynamoe.Layer(
            {"d_model": 4, "d_hidden": 5, "num_experts": 3, "top_k": 2, "capacity_factor": cf, "min_capacity": 1,
             "activation": act, "gated": gated, "bias": True, "z_loss_weight": 0.1, "name": "moe"},
            torch.classes.dynamoe.LayerState(""), None, False)

        def f(x, gw, w1, w2, w3, b1, b2):
            out = layer.forward(x, gw, None, None, w1, w2, w3 if gated else None, b1, b2, True, [])
            return out[0], out[1]
        inputs = [t.clone().requires_grad_(True) for t in (x, gw, w1, w2, w3, b1, b2)]
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_bfloat16_close_to_fp32():
    """The bf16 layer against the fp32 layer on the same (bf16-representable)
    weights and input: routing identical, and only the bf16 rounding of the
    intermediates (hidden activations, output) differs."""
    torch.manual_seed(3)
    m = dynamoe.MoE(16, 32, 4, top_k=2).to(torch.bfloat16).float()  # bf16-representable values
    x = torch.randn(40, 16).to(torch.bfloat16).float()
    gy = torch.randn(40, 16).to(torch.bfloat16).float()
    x32, xb = x.clone().requires_grad_(), x.to(torch.bfloat16).requires_grad_()
    y32 = m(x32)
    (y32 * gy).sum().backward()
    counts32 = m.stats()["counts"]
    m.to(torch.bfloat16)  # exact: every value is representable
    yb = m(xb)
    (yb * gy.to(torch.bfloat16)).sum().backward()
    assert yb.dtype == torch.bfloat16 and torch.equal(m.stats()["counts"], counts32)
    # 4 bf16 eps of the largest value (a few ulps of it): measured 1.7 for y (mean |y|
    # 0.115, max 0.51) and 0.9 for x.grad; a bound of 5e-2 + 5e-2|y| would allow ~20.
    assert_ulps(yb.float(), y32.detach(), 4, "y", torch.bfloat16)
    assert_ulps(xb.grad.float(), x32.grad, 4, "x.grad", torch.bfloat16)


@pytest.mark.parametrize("dtype,gated,bias,act", [(torch.float64, True, True, "silu"),
                                                  (torch.float32, False, False, "gelu"),
                                                  (torch.float64, False, True, "relu")])
def test_expert_ffn_op_matches_per_expert_loop(dtype, gated, bias, act):
    """README: torch.ops.dynamoe.expert_ffn is the layer's expert piece as an op:
    rows sorted by expert, counts[e] rows each. Output and every gradient against
    a plain per-expert loop, an empty expert included."""
    dynamoe.load_library()
    torch.manual_seed(11)
    E, d, h, counts = 4, 5, 7, [3, 0, 6, 2]
    n = sum(counts)
    make = lambda *shape: torch.randn(*shape, dtype=dtype, requires_grad=True)  # noqa: E731
    rows, w1, w2 = make(n, d), make(E, d, h), make(E, h, d)
    w3 = make(E, d, h) if gated else None
    b1, b2 = (make(E, h), make(E, d)) if bias else (None, None)
    y = torch.ops.dynamoe.expert_ffn(rows, torch.tensor(counts), w1, w2, w3, b1, b2, act)
    gy = torch.randn(n, d, dtype=dtype)
    leaves = [t for t in (rows, w1, w2, w3, b1, b2) if t is not None]
    grads = torch.autograd.grad((y * gy).sum(), leaves)

    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    r = dict(zip([k for k, t in zip(("rows", "w1", "w2", "w3", "b1", "b2"), (rows, w1, w2, w3, b1, b2))
                  if t is not None], ref_leaves))
    act_fn = reference.ACT[act]
    outs, off = [], 0
    for e, c in enumerate(counts):
        xe = r["rows"][off:off + c]
        hid = xe @ r["w1"][e] + (r["b1"][e] if bias else 0)
        a = act_fn(hid) * (xe @ r["w3"][e] if gated else 1)
        outs.append(a @ r["w2"][e] + (r["b2"][e] if bias else 0))
        off += c
    yr = torch.cat(outs)
    ref_grads = torch.autograd.grad((yr * gy).sum(), ref_leaves)
    assert_ulps(y, yr.detach(), ULPS[dtype], "y")
    for name, g, gr in zip(r, grads, ref_grads):
        assert_ulps(g, gr, ULPS[dtype], name + ".grad")
    assert torch.count_nonzero(grads[1][1]) == 0  # expert 1 got no rows: its w1 gradient is zero


def test_ops_compose_to_the_layer():
    """route -> dispatch -> expert_ffn -> combine, as ops, give the layer's output."""
    torch.manual_seed(12)
    m = dynamoe.MoE(8, 12, 4, top_k=2, capacity_factor=0.75, min_capacity=1, gated=True, activation="silu")
    x = torch.randn(19, 8)
    y = m(x)
    ops = torch.ops.dynamoe
    _, weight, pos, kept, _, _, _ = ops.route(x, m.gate.weight, None, 2, 0.75, 1, True, False, 0, 0, "none",
                                              0.01, True, True, "ops")
    assert int(kept.sum()) < 38  # the capacity drops some assignments
    rows = ops.dispatch(x, pos)
    out = ops.expert_ffn(rows, kept, m.w1, m.w2, m.w3, None, None, "silu")
    # the same kernels in the same order: identical
    assert torch.equal(ops.combine(out, weight, pos), y)


def test_built_in_and_custom_experts_report_the_same_stats():
    """stats() has one shape: the C++ step's StepStats dict and the custom-expert path's keys agree."""
    torch.manual_seed(0)
    x = torch.randn(12, 8)
    built_in = dynamoe.MoE(8, 16, 4, top_k=2)
    custom = dynamoe.MoE(8, 16, 4, top_k=2, expert=torch.nn.Linear(8, 8))
    built_in(x), custom(x)
    a, b = built_in.stats(), custom.stats()
    assert set(a) == set(b), f"only built-in: {set(a) - set(b)}, only custom: {set(b) - set(a)}"
    for key in a:
        assert type(a[key]) is type(b[key]) or {type(a[key]), type(b[key])} <= {int, float, type(None), dict}, key
    assert set(a["phase_seconds"]) == {"gate", "count_allgather", "policy", "shadow_broadcast", "dispatch",
                                       "experts", "combine"}
    assert a["counts"].sum() == b["counts"].sum() == 24
