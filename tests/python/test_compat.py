"""dynamoe.compat: FastMoE, DeepSpeed-MoE and Tutel adapters against dynamoe.MoE
with the same weights (one process here; 2 Gloo processes below), and the
warnings and errors of arguments dynamoe does not honour. These check that each
adapter maps its arguments onto the dynamoe.MoE the originals' semantics call
for; test_compat_originals.py checks that behaviour itself against plain
restatements of the originals' gates (outputs, losses, gradients, drops)."""
import pytest
import torch
from torch import nn

import dynamoe
from dynamoe.compat import IgnoredArgumentWarning, deepspeed, fastmoe, tutel

import compat_cases
from test_distributed import assert_all_ok, launch

CASES = sorted(compat_cases.cases(1))


@pytest.mark.parametrize("name", CASES)
def test_adapter_matches_dynamoe_moe(name):
    torch.manual_seed(7)
    layer, ref = compat_cases.build(name, 1)
    compat_cases.copy_weights(compat_cases.inner(layer), ref)
    x = torch.randn(3, 7, compat_cases.D, dtype=torch.float64)  # a batch of sequences
    gy = torch.randn_like(x)
    for training in (True, False):
        layer.train(training), ref.train(training)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, aux = compat_cases.output_of(layer, xa)
        y_ref = ref(xb)
        assert y.shape == x.shape
        # the adapter runs a dynamoe.MoE with these weights and options: identical arithmetic
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
        if not training:
            continue
        torch.testing.assert_close(aux.double(), ref.aux_loss.double(), rtol=0, atol=0)
        ((y * gy).sum() + aux).backward()
        ((y_ref * gy).sum() + ref.aux_loss).backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)
        mine = dict(compat_cases.inner(layer).named_parameters())
        for n, p in ref.named_parameters():
            torch.testing.assert_close(mine[n].grad, p.grad, rtol=0, atol=0, msg=f"gradient of {n}")


def test_deepspeed_returns_first_choice_counts_and_starts_experts_equal():
    torch.manual_seed(0)
    expert = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    moe = deepspeed.MoE(8, expert, num_experts=4, k=2, capacity_factor=2.0, use_rts=False)
    for e in range(4):  # every expert is a copy of `expert`, as DeepSpeed deep-copies it
        torch.testing.assert_close(moe.moe.w1[e], expert[0].weight.t())
        torch.testing.assert_close(moe.moe.b2[e], expert[2].bias)
    x = torch.randn(2, 9, 8)
    out, l_aux, exp_counts = moe(x)
    first = (x.reshape(-1, 8) @ moe.moe.gate.weight.t()).argmax(-1)
    assert exp_counts.device.type == "cpu" and exp_counts.tolist() == torch.bincount(first, minlength=4).tolist()
    assert int(exp_counts.sum()) == 18 and l_aux.requires_grad and out.shape == x.shape
    # A custom expert module runs on the per-expert path (its values:
    # test_compat_originals.py::test_deepspeed_custom_expert_module_runs_per_expert_like_deepspeed).
    custom = deepspeed.MoE(8, nn.Linear(8, 8), num_experts=2, k=1)
    assert len(custom.moe.experts) == 2 and custom.moe.w1 is None


def test_fastmoe_switch_gate_and_custom_expert():
    torch.manual_seed(0)
    layer = fastmoe.FMoE(num_expert=3, d_model=8, top_k=1, gate=fastmoe.SwitchGate, expert=lambda d: nn.Linear(d, d))
    moe = layer.moe
    assert (moe.top_k, moe.capacity_factor, moe.eval_capacity_factor) == (1, 1.2, 2.4)
    assert moe.noisy_gate_policy == "Jitter" and moe.jitter_eps == pytest.approx(0.1) and not moe.normalize_topk
    layer(torch.randn(10, 8))
    assert layer.gate.get_loss() is moe.aux_loss
    assert layer.gate.gate is moe.gate  # FastMoE's gate.gate is the router's Linear
    assert len(moe.experts) == 3 and moe.w1 is None  # values: test_compat_originals.py (custom expert, eval)


def test_tutel_marks_and_result_func():
    layer = tutel.moe_layer(gate_type={"type": "top", "k": 1, "capacity_factor": -1.5}, model_dim=8,
                            experts={"type": "ffn", "count_per_node": 2, "hidden_size_per_expert": 16,
                                     "activation_fn": lambda x: torch.nn.functional.gelu(x)},
                            result_func=lambda y: (y, y.l_aux))
    expert = {id(p) for p in layer.moe.expert_parameters()}
    for n, p in layer.named_parameters():
        assert getattr(p, "skip_allreduce", False) == (id(p) in expert), n
    y, l_aux = layer(torch.randn(4, 5, 8))
    assert y.shape == (4, 5, 8) and l_aux is layer.moe.aux_loss
    # Tutel's -1.5: dropless up to 1 * int(1.5 * ceil(20 / 2)) = 15 rows per expert (drops against
    # Tutel's meaning: test_compat_originals.py::test_tutel_negative_capacity_is_dropless_up_to_the_bound)
    assert layer.tutel_capacity_factor == -1.5 and layer.moe.activation == "gelu"
    assert layer.moe.stats()["capacity"] == 15


@pytest.mark.parametrize("build,message", [
    (lambda: fastmoe.FMoETransformerMLP(num_expert=2, d_model=8, d_hidden=16, mp_group=object()), "mp_group"),
    (lambda: fastmoe.FMoETransformerMLP(num_expert=2, d_model=8, d_hidden=16, activation=nn.Tanh()), "Tanh"),
    (lambda: fastmoe.FMoETransformerMLP(num_expert=2, d_model=8, d_hidden=16, gate=_custom_gate), "custom gate"),
    (lambda: fastmoe.GShardGate(8, 2, 1, random_routing=True), "random_routing=True"),
    (lambda: fastmoe.FMoE(num_expert=2, d_model=8), "expert=None"),
    (lambda: deepspeed.MoE(8, nn.Linear(8, 8), num_experts=4, k=3), "k must be 1 or 2"),
    (lambda: deepspeed.MoE(8, nn.Linear(8, 8), num_experts=3, ep_size=2), "divisible by ep_size"),
    (lambda: deepspeed.MoE(8, nn.Linear(8, 8), num_experts=2, enable_expert_tensor_parallelism=True),
     "enable_expert_tensor_parallelism"),
    (lambda: deepspeed.MoE(8, nn.Linear(8, 8), num_experts=2, use_residual=True), "use_residual"),
    (lambda: tutel.moe_layer({"type": "top", "k": 2, "gate_noise": 1.0}, 8, {"hidden_size_per_expert": 8}),
     "gate_noise"),
    (lambda: tutel.moe_layer({"type": "cosine_top"}, 8, {"hidden_size_per_expert": 8}), "cosine_top"),
    (lambda: tutel.moe_layer({"type": "top", "k": -2}, 8, {"hidden_size_per_expert": 8}), "k=-2"),
    (lambda: tutel.moe_layer({"type": "top"}, 8, {"hidden_size_per_expert": 8, "has_fc1_bias": False}),
     "has_fc1_bias"),
    (lambda: tutel.moe_layer({"type": "top"}, 8, {"hidden_size_per_expert": 8}, batch_prioritized_routing=True),
     "batch_prioritized_routing"),
    (lambda: tutel.moe_layer({"type": "top"}, 8, {"hidden_size_per_expert": 8,
                                                  "activation_fn": lambda x: torch.tanh(x)}), "not supported"),
])
def test_unsupported_arguments_fail_naming_them(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build()


def _custom_gate(d_model, num_expert, world_size, top_k):
    return nn.Linear(d_model, num_expert)


@pytest.mark.parametrize("build,name", [
    (lambda: fastmoe.FMoETransformerMLP(num_expert=2, d_model=8, d_hidden=16, expert_dp_comm="dp"), "expert_dp_comm"),
    (lambda: fastmoe.FMoETransformerMLP(num_expert=2, d_model=8, d_hidden=16, gate=fastmoe.GShardGate),
     "random_routing"),
    (lambda: deepspeed.MoE(8, nn.Linear(8, 8), num_experts=2, use_tutel=True), "use_tutel"),
    (lambda: tutel.moe_layer({"type": "top", "fp32_gate": True}, 8, {"hidden_size_per_expert": 8, "count_per_node": 2},
                             seeds=(1, 1, 1),
                             use_2dh=True), "seeds"),
])
def test_meaningless_arguments_warn(build, name):
    with pytest.warns(IgnoredArgumentWarning, match=name):
        layer = build()
    assert isinstance(layer.moe, dynamoe.MoE)


@pytest.mark.parametrize("name", CASES)
def test_adapter_matches_dynamoe_moe_on_two_gloo_processes(tmp_path, name):
    proc, reports = launch(tmp_path, 2, "--scenario=compat", f"--compat={name}", "--tokens=9,13")
    assert_all_ok(proc, reports)
