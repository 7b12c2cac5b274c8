"""The compatibility adapters built the way the seeds' examples build them,
each with the dynamoe.MoE arguments it must amount to (written from the
libraries' documented semantics, not read back from the adapter)."""
import warnings

import torch
from torch import nn

import dynamoe
from dynamoe.compat import deepspeed, fastmoe, tutel

D, H = 6, 10


def cases(world):
    """name -> (build the adapter, dynamoe.MoE kwargs with the total expert count)."""
    per = 4 // world  # 4 experts in all: with top-2 of 2, renormalising would change nothing
    relu = lambda x: torch.nn.functional.relu(x)  # noqa: E731 - Tutel's README passes a lambda
    return {
        "fastmoe_naive": (
            lambda: fastmoe.FMoETransformerMLP(num_expert=per, d_model=D, d_hidden=H, world_size=world, top_k=2),
            dict(num_experts=4, top_k=2, capacity_factor=0.0, normalize_topk=True, balance_loss_weight=0.0,
                 activation="gelu", bias=True, min_capacity=0, router_bias=True)),
        "fastmoe_gshard": (
            lambda: fastmoe.FMoETransformerMLP(num_expert=per, d_model=D, d_hidden=H, world_size=world,
                                               activation=nn.ReLU(), gate=_gshard),
            # FastMoE's GShard capacity ceil(f * T) is dynamoe's factor f * E / k; its loss
            # mean(c_e * m_e) * num_expert**2 is the first-choice loss / world**2.
            dict(num_experts=4, top_k=2, capacity_factor=2.4, eval_capacity_factor=4.8, min_capacity=0,
                 normalize_topk=True, balance_loss_weight=1.0 / world ** 2, balance_loss_choices="first",
                 activation="relu", bias=True, router_bias=True)),
        "deepspeed": (
            lambda: deepspeed.MoE(hidden_size=D, expert=nn.Sequential(nn.Linear(D, H), nn.GELU(), nn.Linear(H, D)),
                                  num_experts=4, ep_size=world, k=2, use_rts=False),
            # top2gating: kept gates renormalised after drops, l_aux over first choices.
            dict(num_experts=4, top_k=2, capacity_factor=1.0, eval_capacity_factor=1.0, min_capacity=4,
                 activation="gelu", bias=True, normalize_kept=True, balance_loss_choices="first")),
        "tutel": (
            lambda: tutel.moe_layer(gate_type={"type": "top", "k": 2, "capacity_factor": 0.0}, model_dim=D,
                                    experts={"type": "ffn", "count_per_node": per, "hidden_size_per_expert": H,
                                             "activation_fn": relu},
                                    scan_expert_func=lambda name, p: setattr(p, "scanned", name)),
            dict(num_experts=4, top_k=2, capacity_factor=0.0, activation="relu", bias=True, min_capacity=0,
                 balance_loss_choices="first")),
    }


def _gshard(d_model, num_expert, world_size, top_k):
    return fastmoe.GShardGate(d_model, num_expert, world_size, topk=top_k, random_routing=False)


def build(name, world):
    """(adapter, reference dynamoe.MoE with every expert in this process), float64."""
    make, kw = cases(world)[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the seeds' examples must not trigger a warning
        layer = make().double()
    kw = dict(kw)
    ref = dynamoe.MoE(D, H, kw.pop("num_experts"), **kw).double()
    return layer, ref


def inner(layer):
    return layer.moe


def copy_weights(moe, ref):
    """The reference's router and this rank's slice of its experts into a
    dynamoe.MoE (an adapter's inner(layer), or any expert-parallel layer)."""
    first, el = moe.first_expert, moe.num_local_experts
    with torch.no_grad():
        moe.gate.weight.copy_(ref.gate.weight)
        if ref.gate.bias is not None:
            moe.gate.bias.copy_(ref.gate.bias)
        for n in ("w1", "w2", "w3", "b1", "b2"):
            if getattr(moe, n) is not None:
                getattr(moe, n).copy_(getattr(ref, n)[first:first + el])
    return first, el


def output_of(layer, x):
    """(output, aux loss) as each library returns them."""
    out = layer(x)
    if isinstance(out, tuple):  # DeepSpeed: (output, l_aux, exp_counts)
        return out[0], out[1]
    if hasattr(out, "l_aux"):  # Tutel
        return out, out.l_aux
    loss = layer.gate.get_loss()  # FastMoE
    return out, loss if loss is not None else torch.zeros((), dtype=out.dtype)
