"""Checkpoints that survive a change of expert-parallel size.

A model's state_dict() holds each rank's slice of the experts ([E_local, ...]
under names that do not say which experts they are). The portable form keys
every expert by its global index instead:

    <layer>.experts.<e>.w1   [d_model, d_hidden]     (and w2, w3, b1, b2)

    sd = dynamoe.portable_state_dict(model)            # every expert, on every rank
    if dist.get_rank() == 0: torch.save(sd, "ckpt.pt")
    ...                                                # later, at any ep_size
    dynamoe.load_portable_state_dict(model, torch.load("ckpt.pt"))

With gather=False each rank returns only its own experts (save one file per
rank; load the union of the files). Copies of hot experts that placement
makes are transient buffers, never parameters: they never enter a checkpoint.
"""
from collections import OrderedDict

import torch
import torch.distributed as dist

from .distributed import _wait
from .moe import MoE

_EXPERT_TENSORS = ("w1", "w2", "w3", "b1", "b2")


def _moe_layers(model):
    for name, m in model.named_modules():
        if isinstance(m, MoE) and m.experts is not None and m.group is not None:
            raise ValueError(f"{name or m.name}: custom expert modules with expert parallelism have no portable "
                             "form (their keys, experts.<k>, are this rank's); save each rank's model.state_dict()")
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoE) and m.experts is None]


def _prefix(name):
    return name + "." if name else ""


def portable_state_dict(model, gather=True):
    """model.state_dict() with every built-in-FFN MoE layer's expert tensors
    keyed by global expert index. gather=True: all experts on every rank (a
    collective over each layer's expert-parallel group: every rank must call
    it); gather=False: this rank's experts only."""
    sd = model.state_dict()
    for name, m in _moe_layers(model):
        pre = _prefix(name)
        for t in _EXPERT_TENSORS:
            local = sd.pop(pre + t, None)
            if local is None:
                continue
            first, parts = m.first_expert, [local]
            if gather and "_ep_size_without_group" in m.__dict__:
                raise RuntimeError(f"{m.name}: this layer was unpickled without its expert-parallel group, so it "
                                   "cannot gather the other ranks' experts: call layer.set_group(group) first")
            if gather and m.group is not None:
                parts = [torch.empty_like(local) for _ in range(dist.get_world_size(m.group))]
                _wait(dist.all_gather(parts, local.contiguous(), group=m.group, async_op=True),
                      f"{m.name}: gathering {t} for a portable checkpoint", m.group)
                first = 0
            for e, tensor in enumerate(torch.cat(parts)):
                sd[f"{pre}experts.{first + e}.{t}"] = tensor.clone()
    return sd


def load_portable_state_dict(model, state_dict, strict=True):
    """Loads a portable_state_dict() (from any expert-parallel size) into model:
    each layer takes the experts it holds here. strict: every expected key is
    present and no key is left over, as nn.Module.load_state_dict."""
    sd = OrderedDict(state_dict)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        sd._metadata = metadata
    for name, m in _moe_layers(model):
        pre = _prefix(name)
        for t in _EXPERT_TENSORS:
            if getattr(m, t) is None:
                continue
            wanted = [f"{pre}experts.{e}.{t}" for e in range(m.first_expert, m.first_expert + m.num_local_experts)]
            missing = [k for k in wanted if k not in sd]
            if missing and strict:
                raise KeyError(f"{m.name}: the checkpoint lacks {len(missing)} expert tensors this rank holds, "
                               f"e.g. {missing[0]!r} (is it a portable_state_dict(..., gather=False) shard of "
                               "another rank? load the union of every rank's shards)")
            if not missing:  # not strict and incomplete: load_state_dict reports the tensor missing
                sd[pre + t] = torch.stack([sd.pop(k) for k in wanted])
        # Other ranks' experts of the tensors this layer has are not this rank's to
        # load; any other expert key is left for load_state_dict to report.
        for key in [k for k in sd if k.startswith(pre + "experts.")]:
            rest = key[len(pre + "experts."):].split(".")
            if len(rest) == 2 and rest[0].isdigit() and rest[1] in _EXPERT_TENSORS and getattr(m, rest[1]) is not None:
                e = int(rest[0])
                if not 0 <= e < m.num_experts:
                    raise KeyError(f"{m.name}: the checkpoint has expert {e}, but the layer has {m.num_experts}")
                del sd[key]
    return model.load_state_dict(sd, strict=strict)
