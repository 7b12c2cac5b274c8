"""FastMoE's layers (``fmoe.FMoE``, ``fmoe.FMoETransformerMLP``, the gates and
``DistributedGroupedDataParallel``) over dynamoe.MoE.

    from dynamoe.compat.fastmoe import FMoETransformerMLP   # was: from fmoe import FMoETransformerMLP
    mlp = FMoETransformerMLP(num_expert=2, d_model=512, d_hidden=2048, world_size=dist.get_world_size(),
                             top_k=2, gate=GShardGate)

``num_expert`` is experts per rank (FastMoE's meaning), so the layer has
``num_expert * world_size`` experts. FastMoE's FMOE_FASTER_SCHEDULE_ENABLE,
FMOE_FASTER_SHADOW_ENABLE, FMOE_FASTER_GROUP_SIZE and FMOE_FASTER_GLBPLC_*
variables are read by dynamoe's configuration (README, "Configuration").
"""
import torch
from torch import nn
import torch.distributed as dist

from ..distributed import sum_gradients
from ..moe import MoE
from ._common import activation_name, group_size, ignored, register_state_dict_adapter, unsupported


class _Gate(nn.Module):
    """A FastMoE gate as a routing description: dynamoe computes the routing
    inside the layer. ``gate.gate`` is the layer's router ``nn.Linear`` (with a
    bias unless gate_bias=False, as FastMoE's) and ``get_loss()`` returns the
    layer's balance loss, as in FastMoE."""
    top_k_default = 2
    normalize_topk = True      # FastMoE takes the softmax over the top-k logits
    balance_loss_weight = 0.0  # NaiveGate has no loss
    balance_loss_choices = "all"
    capacity = (0.0, None)     # dropless

    def __init__(self, d_model, num_expert, world_size, top_k=None, gate_bias=True):
        super().__init__()
        self.d_model, self.num_expert, self.world_size = d_model, num_expert, world_size
        self.tot_expert = num_expert * world_size
        self.top_k = self.top_k_default if top_k is None else top_k
        self.gate_bias = bool(gate_bias)
        self.noisy_gate_policy, self.jitter_eps = None, 0.01
        object.__setattr__(self, "_layer", None)  # set by FMoE; not a submodule (no duplicate state_dict keys)

    @property
    def gate(self):
        return self._layer.moe.gate

    def capacity_factors(self):
        """(train, eval) capacity factors in dynamoe's meaning (capacity
        ceil(top_k * T / E * factor) per expert and source rank)."""
        return self.capacity

    def get_loss(self, clear=True):
        loss = self._layer.moe.aux_loss if self._layer is not None else None
        if loss is None or self.balance_loss_weight == 0:
            return None
        return loss

    @property
    def has_loss(self):
        return self.balance_loss_weight > 0


class NaiveGate(_Gate):
    """Top-k of a linear router; the k weights are a softmax over the k logits. No loss, no capacity."""


class GShardGate(_Gate):
    """Top-2 with GShard's balance loss and capacity (train, eval) factors, as
    FastMoE's fmoe/gates/gshard_gate.py: loss mean(c_e * m_e) * num_expert**2
    over first choices (dynamoe's "first" loss / world_size**2), capacity
    ceil(factor * T) rows per expert."""
    balance_loss_choices = "first"

    def __init__(self, d_model, num_expert, world_size, topk=2, capacity=(1.2, 2.4), random_routing=None,
                 gate_bias=True):
        super().__init__(d_model, num_expert, world_size, topk, gate_bias)
        if topk != 2:
            unsupported("GShardGate", f"topk={topk}", "GShard routing is top-2")
        if random_routing:
            unsupported("GShardGate", "random_routing=True",
                        "dynamoe keeps every second choice that fits the capacity (deterministic routing)")
        if random_routing is None:
            ignored("GShardGate", "random_routing (FastMoE's default True)",
                    "dynamoe keeps every second choice that fits the capacity instead of sampling it; "
                    "pass random_routing=False to silence this")
        self.balance_loss_weight = 1.0 / world_size ** 2
        self.capacity = (float(capacity[0]), float(capacity[1]))

    def capacity_factors(self):
        # ceil(f * T) == ceil(top_k * T / E * f'), f' = f * E / top_k
        return tuple(f * self.tot_expert / self.top_k for f in self.capacity)


class SwitchGate(_Gate):
    """Top-1 with the Switch balance loss, capacity (train, eval) factors and
    jitter noise of switch_eps on the router input in training."""
    normalize_topk = False  # the top-1 weight is the softmax probability

    def __init__(self, d_model, num_expert, world_size, topk=1, switch_eps=0.1, capacity=(1.2, 2.4), gate_bias=True):
        super().__init__(d_model, num_expert, world_size, topk, gate_bias)
        if topk != 1:
            unsupported("SwitchGate", f"topk={topk}", "Switch routing is top-1")
        self.balance_loss_weight = 1.0
        self.capacity = (float(capacity[0]), float(capacity[1]))
        if switch_eps > 0:
            self.noisy_gate_policy, self.jitter_eps = "Jitter", float(switch_eps)

    def capacity_factors(self):
        # FastMoE divides by num_expert, the experts per rank: ceil(f * T / num_expert)
        return tuple(f * self.world_size for f in self.capacity)


class FMoE(nn.Module):
    """FastMoE's FMoE: ``num_expert`` experts per rank over ``world_size`` ranks
    (``moe_group``, default the world). ``expert`` builds one expert from
    ``d_model`` (each rank builds its ``num_expert``); FMoETransformerMLP has built-in FFN experts."""

    def __init__(self, num_expert=32, d_model=1024, world_size=1, mp_group=None, slice_group=None, moe_group=None,
                 top_k=2, gate=NaiveGate, expert=None, gate_hook=None, mask=None, mask_dict=None, *,
                 _ffn=None, name="fmoe"):
        super().__init__()
        where = type(self).__name__
        for arg, value, why in (("mp_group", mp_group, "tensor-model-parallel slicing of the tokens"),
                                ("slice_group", slice_group, "tensor-model-parallel slicing of the tokens"),
                                ("gate_hook", gate_hook, "dynamoe computes the routing inside the layer"),
                                ("mask", mask, "masked tokens change the routing"),
                                ("mask_dict", mask_dict, "masked tokens change the routing")):
            if value is not None:
                unsupported(where, arg, why)
        self.num_expert, self.d_model, self.world_size, self.top_k = num_expert, d_model, world_size, top_k
        group = None
        if world_size > 1:
            group = moe_group if moe_group is not None else dist.group.WORLD
            if group_size(group) != world_size:
                raise ValueError(f"{where}: world_size={world_size} but the expert-parallel group has "
                                 f"{group_size(group)} ranks (torch.distributed initialised?)")
        gate_obj = gate(d_model, num_expert, world_size, top_k)
        if not isinstance(gate_obj, _Gate):
            unsupported(where, f"gate={gate!r}", "custom gate classes; use NaiveGate, GShardGate or SwitchGate "
                        "(from dynamoe.compat.fastmoe)")
        cf_train, cf_eval = gate_obj.capacity_factors()
        kw = dict(top_k=gate_obj.top_k, capacity_factor=cf_train, eval_capacity_factor=cf_eval, min_capacity=0,
                  normalize_topk=gate_obj.normalize_topk, balance_loss_weight=gate_obj.balance_loss_weight,
                  balance_loss_choices=gate_obj.balance_loss_choices, router_bias=gate_obj.gate_bias,
                  noisy_gate_policy=gate_obj.noisy_gate_policy, jitter_eps=gate_obj.jitter_eps, name=name,
                  group=group)
        total = num_expert * world_size
        if _ffn is not None:
            d_hidden, activation = _ffn
            self.moe = MoE(d_model, d_hidden, total, activation=activation, bias=True, **kw)
        elif expert is None:
            unsupported(where, "expert=None", "FMoE needs an expert class; FMoETransformerMLP has built-in ones")
        else:
            self.moe = MoE(d_model, 1, total, expert=lambda e: expert(d_model), **kw)
        object.__setattr__(gate_obj, "_layer", self)
        self.gate = gate_obj
        # FastMoE checkpoints load as they are (see _rename).
        register_state_dict_adapter(self)

    def _rename(self, sd, prefix):
        """FastMoE's keys renamed or stacked into this layer's: gate.gate.* (the
        router), experts.{htoh4,h4toh}.* (fused [num_expert, out, in] FMoELinear),
        experts.{i}.{htoh4,h4toh}.* ([1, out, in] per expert), experts.{i}.* (custom)."""
        for part in ("weight", "bias"):
            if prefix + "gate.gate." + part in sd:
                sd[prefix + "moe.gate." + part] = sd.pop(prefix + "gate.gate." + part)
        # Fused: one FMoELinear per layer; per expert: experts.{i} each hold FMoELinear(1, ...).
        names = ([""] if prefix + "experts.htoh4.weight" in sd else
                 [f"{e}." for e in range(self.num_expert)] if prefix + "experts.0.htoh4.weight" in sd else None)
        if names is not None:
            for theirs, w, b in (("htoh4", "w1", "b1"), ("h4toh", "w2", "b2")):
                keys = [f"{prefix}experts.{n}{theirs}." for n in names]
                sd[prefix + "moe." + w] = torch.cat([sd.pop(k + "weight") for k in keys]).transpose(1, 2)
                if keys[0] + "bias" in sd:
                    sd[prefix + "moe." + b] = torch.cat([sd.pop(k + "bias") for k in keys])
        elif self.moe.experts is not None:
            for key in [k for k in sd if k.startswith(prefix + "experts.")]:
                sd[prefix + "moe." + key[len(prefix):]] = sd.pop(key)

    @property
    def experts(self):
        return self.moe.experts

    def forward(self, inp):
        """[..., d_model] -> the same shape."""
        return self.moe(inp)


class FMoETransformerMLP(FMoE):
    """FastMoE's transformer MLP: each expert is Linear(d_model, d_hidden) ->
    activation -> Linear(d_hidden, d_model), with biases."""

    def __init__(self, num_expert=32, d_model=1024, d_hidden=4096, activation=torch.nn.GELU(), expert_dp_comm="none",
                 expert_rank=0, **kwargs):
        where = "FMoETransformerMLP"
        if expert_dp_comm != "none":
            ignored(where, f"expert_dp_comm={expert_dp_comm!r}", "expert gradients are reduced by "
                    "DistributedGroupedDataParallel (or dynamoe.reduce_gradients) over the expert-data-parallel "
                    "group")
        if expert_rank != 0:
            ignored(where, "expert_rank", "dynamoe places experts by rank in the expert-parallel group")
        if "expert" in kwargs:
            unsupported(where, "expert", "FMoETransformerMLP builds its own FFN experts; use FMoE for custom ones")
        super().__init__(num_expert=num_expert, d_model=d_model, _ffn=(d_hidden, activation_name(where, activation)),
                         **kwargs)
        self.d_hidden = d_hidden


class DistributedGroupedDataParallel(nn.Module):
    """FastMoE's data-parallel wrapper: call ``allreduce_params()`` after
    backward. Expert gradients are summed over the ranks holding the same
    experts and divided by their number; all other gradients are averaged
    over the world (FastMoE's "dp" and "none" communicators)."""

    def __init__(self, module, mp_group=None, dp_group=None, moe_group=None, world_group=None, auto_allreduce=False):
        super().__init__()
        if mp_group is not None:
            unsupported("DistributedGroupedDataParallel", "mp_group", "tensor model parallelism")
        if dp_group is not None or world_group is not None or moe_group is not None:
            ignored("DistributedGroupedDataParallel", "dp_group/moe_group/world_group",
                    "the groups come from each layer's expert-parallel group and the world")
        if auto_allreduce:
            unsupported("DistributedGroupedDataParallel", "auto_allreduce=True",
                        "call allreduce_params() after backward")
        self.module = module
        expert = {id(p) for ps in _expert_groups(module).values() for p in ps}
        with torch.no_grad():  # every rank starts from rank 0's dense weights, as FastMoE's wrapper does
            for p in module.parameters():
                if id(p) not in expert:
                    dist.broadcast(p, 0)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def allreduce_params(self):
        groups = _expert_groups(self.module)
        seen = {id(p) for ps in groups.values() for p in ps}
        groups.setdefault(dist.group.WORLD, []).extend(
            p for p in self.module.parameters() if p.requires_grad and id(p) not in seen)
        for group, params in groups.items():
            sum_gradients([p for p in params if p.grad is not None], group, divide_by=dist.get_world_size(group))


def _expert_groups(module):
    """{expert-data-parallel group: expert parameters} of the expert-parallel layers in module."""
    from ..distributed import _expert_dp_group
    groups = {}
    for m in module.modules():
        if isinstance(m, MoE) and m.group is not None:
            groups.setdefault(_expert_dp_group(m.group), []).extend(m.expert_parameters())
    return groups
