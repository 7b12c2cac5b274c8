"""Bad input to the layer and to the exported ops: a RuntimeError or ValueError naming the
argument and what was expected, never a wrong number, a read past a buffer or a crash."""
import pytest
import torch

import dynamoe

ops = None


def setup_module():
    global ops
    dynamoe.load_library()
    ops = torch.ops.dynamoe


def test_huge_capacity_factor_drops_nothing():
    torch.manual_seed(0)
    m = dynamoe.MoE(8, 16, 4, top_k=2, capacity_factor=1e20)
    m(torch.randn(100, 8))
    assert m.stats()["dropped"] == 0
    assert m.stats()["capacity"] == 100  # clamped to the tokens: no expert can receive more
    ref = dynamoe.MoE(8, 16, 4, top_k=2, capacity_factor=0.0)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(100, 8)
    assert torch.equal(m(x), ref(x))


@pytest.mark.parametrize("args,message", [
    ((100, 2, 0, 1.0, 4), "num_experts must be >= 1, got 0"),
    ((-1, 2, 8, 1.0, 4), "num_tokens must be >= 0"),
    ((100, 0, 8, 1.0, 4), "top_k must be in [1, 64], got 0"),
    ((100, 2, 8, float("nan"), 4), "capacity_factor must be finite"),
    ((100, 2, 8, 1.0, -3), "min_capacity must be >= 0"),
])
def test_expert_capacity_rejects_bad_arguments(args, message):
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ops.expert_capacity(*args)


@pytest.mark.parametrize("kw,message", [
    (dict(bias_update_rate=float("inf")), "bias_update_rate must be finite and >= 0, got inf"),
    (dict(bias_update_rate=float("nan")), "bias_update_rate must be finite and >= 0"),
    (dict(balance_loss_weight=float("inf")), "balance_loss_weight must be finite"),
    (dict(z_loss_weight=float("inf")), "z_loss_weight must be finite"),
    (dict(capacity_factor=float("inf")), "capacity_factor must be finite"),
])
def test_non_finite_options_are_rejected(kw, message):
    with pytest.raises(RuntimeError, match=message):
        dynamoe.MoE(8, 16, 4, **kw)


def routed(T=6, k=2, E=4, d=5):
    torch.manual_seed(1)
    x = torch.randn(T, d)
    gate = torch.randn(E, d)
    idx, weight, pos, kept, _, _, _ = ops.route(x, gate, None, k, 0.0, 1, True, False, 0, 0, "none", 0.01, True,
                                                False, "t")
    return x, gate, weight, pos, kept


def test_combine_rejects_positions_outside_the_rows():
    x, _, weight, pos, _ = routed()
    rows = ops.dispatch(x, pos)
    bad = pos.clone()
    bad[0, 0] = rows.shape[0] + 1000
    with pytest.raises(RuntimeError, match=r"combine: position\[0, 0\] = 1012 is outside \[-1, 12\)"):
        ops.combine(rows, weight, bad)
    dup = pos.clone()
    dup[0, 0] = dup[0, 1]
    with pytest.raises(RuntimeError, match="combine: row .* is named by position entries"):
        ops.combine(rows, weight, dup)
    short = pos.clone()
    short[short == 11] = -1  # row 11 then belongs to no assignment
    with pytest.raises(RuntimeError, match="combine: position names 11 rows but there are 12"):
        ops.combine(rows, weight, short)
    with pytest.raises(RuntimeError, match=r"combine: weight must have shape \[6, 2\], got \[6, 1\]"):
        ops.combine(rows, weight[:, :1], pos)
    with pytest.raises(RuntimeError, match="combine: weight must be Float, got Double"):
        ops.combine(rows, weight.double(), pos)
    # the good call: out[t] = sum_j weight[t, j] * rows[pos[t, j]], summed in choice order; equal
    # here, 2 eps of the largest value allowed where the compiler fuses a multiply-add (aarch64)
    want = torch.stack([sum(weight[t, j] * rows[pos[t, j]] for j in range(pos.shape[1]) if pos[t, j] >= 0)
                        for t in range(pos.shape[0])])
    bound = 2 * torch.finfo(torch.float32).eps * want.abs().max().item()
    torch.testing.assert_close(ops.combine(rows, weight, pos), want, rtol=0, atol=bound)


def test_dispatch_rejects_bad_positions():
    x, _, _, pos, _ = routed()
    bad = pos.clone()
    bad[2, 1] = -7
    with pytest.raises(RuntimeError, match=r"dispatch: position\[2, 1\] = -7 is outside"):
        ops.dispatch(x, bad)
    with pytest.raises(RuntimeError, match=r"dispatch: position must have shape \[6, 2\], got \[5, 2\]"):
        ops.dispatch(x, pos[:5])
    with pytest.raises(RuntimeError, match="dispatch: position must be Long, got Int"):
        ops.dispatch(x, pos.int())


def test_expert_ffn_rejects_counts_and_weights_that_disagree():
    x, _, _, pos, kept = routed()
    rows = ops.dispatch(x, pos)
    E, d, h = 4, 5, 7
    w1, w2 = torch.randn(E, d, h), torch.randn(E, h, d)
    y = ops.expert_ffn(rows, kept, w1, w2, None, None, None, "gelu")
    assert y.shape == rows.shape
    with pytest.raises(RuntimeError, match=r"expert_ffn: counts must have one entry per expert \(4\), got 3"):
        ops.expert_ffn(rows, kept[:3], w1, w2, None, None, None, "gelu")
    with pytest.raises(RuntimeError, match=r"expert_ffn: w2 must have shape \[4, 7, 5\], got \[3, 7, 5\]"):
        ops.expert_ffn(rows, kept, w1, w2[:3], None, None, None, "gelu")
    with pytest.raises(RuntimeError, match="expert_ffn: counts sum to 13 but rows has 12 rows"):
        ops.expert_ffn(rows, kept + torch.tensor([1, 0, 0, 0]), w1, w2, None, None, None, "gelu")
    with pytest.raises(RuntimeError, match=r"expert_ffn: counts\[0\] = -1 is outside"):
        ops.expert_ffn(rows, kept - torch.tensor([kept[0] + 1, -kept[0] - 1, 0, 0]), w1, w2, None, None, None,
                       "gelu")
    with pytest.raises(RuntimeError, match=r"expert_ffn: b1 must have shape \[4, 7\], got \[4, 5\]"):
        ops.expert_ffn(rows, kept, w1, w2, None, torch.randn(E, d), None, "gelu")
    with pytest.raises(RuntimeError, match="expert_ffn: w1 has dtype Double but rows has dtype Float"):
        ops.expert_ffn(rows, kept, w1.double(), w2, None, None, None, "gelu")
    with pytest.raises(RuntimeError, match='expert_ffn: activation must be one of gelu, relu, silu, got "tanh"'):
        ops.expert_ffn(rows, kept, w1, w2, None, None, None, "tanh")


def test_route_rejects_bad_shapes():
    x, gate, _, _, _ = routed()
    with pytest.raises(RuntimeError, match=r"route: x must have shape \[6, 5\], got \[6, 4\]"):
        ops.route(x[:, :4], gate, None, 2, 0.0, 1, True, False, 0, 0, "none", 0.01, True, False, "t")
    with pytest.raises(RuntimeError, match=r"route: expert_bias must have shape \[4\], got \[3\]"):
        ops.route(x, gate, torch.zeros(3), 2, 0.0, 1, True, False, 0, 0, "none", 0.01, True, False, "t")
    with pytest.raises(RuntimeError, match="route: gate_weight must be 2-D"):
        ops.route(x, gate[0], None, 2, 0.0, 1, True, False, 0, 0, "none", 0.01, True, False, "t")
    with pytest.raises(RuntimeError, match="route: x must be float32, float64 or bfloat16"):
        ops.route(x.long(), gate, None, 2, 0.0, 1, True, False, 0, 0, "none", 0.01, True, False, "t")


@pytest.mark.parametrize("args,message", [
    (("0", "127.0.0.1", 0, [0], "g"), r"port must be in \[1, 65535\], got 0"),
    (("0", "", 29500, [0], "g"), "host is empty"),
    (("0", "127.0.0.1", 29500, [0, 0], "g"), r"global_ranks must be distinct world ranks >= 0, got 0 in \[0, 0\]"),
    (("no-such-group", "127.0.0.1", 29500, [0], "g"),
     'no torch.distributed process group is registered as "no-such-group"'),
])
def test_group_communicator_rejects_bad_arguments(args, message):
    with pytest.raises(RuntimeError, match=message):
        ops.group_communicator(*args)


def test_set_gemm_algorithm_takes_the_settings_names_only():
    with pytest.raises(RuntimeError, match='unknown GEMM algorithm "fast"; expected one of loop, grouped'):
        ops.set_gemm_algorithm("fast")
    m = dynamoe.MoE(4, 8, 2)
    x = torch.randn(5, 4)
    before = m(x)
    try:
        ops.set_gemm_algorithm("grouped")
        assert torch.equal(m(x), before), "the CPU path has one GEMM algorithm"
    finally:
        ops.set_gemm_algorithm("")  # the setting's again


def test_layer_state_rejects_bad_values():
    s = torch.classes.dynamoe.LayerState("")
    with pytest.raises(RuntimeError, match="step must be >= 0, got -1"):
        s.set_step(-1)
    with pytest.raises(RuntimeError, match='unknown policy "fast"'):
        torch.classes.dynamoe.LayerState("fast")


def test_layer_options_are_checked_by_name_and_type():
    state = torch.classes.dynamoe.LayerState("")
    with pytest.raises(RuntimeError, match="unknown option.s. top_kk; expected MoEOptions names: .*top_k"):
        torch.classes.dynamoe.Layer({"d_model": 4, "d_hidden": 8, "num_experts": 2, "top_kk": 1}, state, None, False)
    with pytest.raises(RuntimeError, match="option gated must be a bool, got Int"):
        torch.classes.dynamoe.Layer({"d_model": 4, "d_hidden": 8, "num_experts": 2, "gated": 1}, state, None, False)
    with pytest.raises(RuntimeError, match="named: top_k must be in .1, num_experts=2., got 3"):
        torch.classes.dynamoe.Layer({"d_model": 4, "d_hidden": 8, "num_experts": 2, "top_k": 3, "name": "named"},
                                    state, None, False)
    layer = torch.classes.dynamoe.Layer({"d_model": 4, "d_hidden": 8, "num_experts": 2}, state, None, False)
    assert layer.name().startswith("moe") and layer.num_local_experts() == 2
    with pytest.raises(RuntimeError, match="dispatch is for custom experts"):
        layer.dispatch(torch.randn(3, 4), torch.randn(2, 4), None, None, False)


def test_options_set_after_construction_are_validated_and_take_effect():
    m = dynamoe.MoE(4, 8, 2, top_k=1, capacity_factor=0.0, name="late")
    x = torch.randn(6, 4)
    m(x)
    assert m.stats()["counts"].sum() == 6
    with pytest.raises(RuntimeError, match="late: top_k must be in \\[1, num_experts=2\\], got 3"):
        m.top_k = 3
    assert m.top_k == 1  # unchanged by the failed set
    m.top_k = 2
    m(x)
    assert m.stats()["counts"].sum() == 12
    with pytest.raises(AttributeError, match="late: d_model is fixed at construction"):
        m.d_model = 8


def test_a_tensor_on_another_device_names_it_and_what_this_build_runs_on():
    """The message test_cuda_layer.py's skip reason reads: a torch without CUDA can only
    have the CPU-only build."""
    m = dynamoe.MoE(4, 8, 2, name="dev").to("meta")
    want = ("this build runs on CPU only" if torch.version.cuda is None
            else "(this build runs on CPU only|expected the CPU or a CUDA device)")
    with pytest.raises(RuntimeError, match="dev: x is on meta; " + want):
        m(torch.empty(3, 4, device="meta"))


def test_layer_schedule_arguments_are_checked_naming_the_layer():
    for kwargs, message in (({"group_size": -5}, "sched: group_size must be >= 1, got -5"),
                            ({"overlap_degree": 65}, r"sched: overlap_degree must be in \[0, 64\]"),
                            ({"overlap_degree": -1}, r"sched: overlap_degree must be in \[0, 64\]"),
                            ({"schedule": "fast"}, 'sched: .*unknown schedule "fast"; expected one of sequential, '
                                                   'overlap')):
        with pytest.raises(RuntimeError, match=message):
            dynamoe.MoE(4, 8, 2, name="sched", **kwargs)
    assert dynamoe.MoE(4, 8, 2, schedule="overlap", group_size=2, overlap_degree=0).schedule == \
        "overlap(group_size=2, overlap_degree=auto)"
