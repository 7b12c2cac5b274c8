"""dynamoe.MoE against the naive reference: outputs and every gradient."""
import itertools

import pytest
import torch

import dynamoe
import reference


def params_of(m):
    return {k: getattr(m, k) for k in ("w1", "w2", "w3", "b1", "b2")}


def check_against_reference(T, E, k, cf, dtype=torch.float32, gated=False, bias=False, activation="gelu",
                            lead_shape=None, normalize=None, tol=None):
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

    rtol, atol = tol or {torch.float32: (1e-4, 1e-5), torch.float64: (1e-10, 1e-12),
                         torch.bfloat16: (3e-2, 3e-2)}[dtype]
    torch.testing.assert_close(y.reshape(-1, 8), yr, rtol=rtol, atol=atol)
    assert m.stats()["counts"].tolist() == [kept]
    torch.testing.assert_close(m.aux_loss.double(), balance.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.reshape(-1, 8), xr.grad, rtol=rtol, atol=atol)
    torch.testing.assert_close(m.gate.weight.grad, gate_w.grad, rtol=rtol, atol=atol)
    for name, ref in ref_params.items():
        if ref is not None:
            torch.testing.assert_close(getattr(m, name).grad, ref.grad, rtol=rtol, atol=atol, msg=name)


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
        state = torch.classes.dynamoe.LayerState("")

        def f(x, gw, w1, w2, w3, b1, b2):
            out = torch.ops.dynamoe.moe_forward(
                x, gw, None, w1, w2, w3 if gated else None, b1, b2, act, 2, cf, 1, True, False, 0,
                "none", 0.01, 1.0, 0.1, 0.0, True, True, "moe", state)
            return out[0], out[1]
        inputs = [t.clone().requires_grad_(True) for t in (x, gw, w1, w2, w3, b1, b2)]
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_bfloat16_close_to_fp32():
    torch.manual_seed(3)
    m = dynamoe.MoE(16, 32, 4, top_k=2)
    x = torch.randn(40, 16)
    y32 = m(x)
    yb = m.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), y32, rtol=5e-2, atol=5e-2)
