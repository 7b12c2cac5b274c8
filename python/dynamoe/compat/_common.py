"""What the adapters share: warnings for ignored arguments, activation
mapping, and loading an FFN expert module's weights into dynamoe.MoE."""
import warnings

import torch
from torch import nn
import torch.nn.functional as F


class IgnoredArgumentWarning(UserWarning):
    """An argument of the original library that has no meaning in dynamoe."""


def ignored(where, name, why):
    warnings.warn(f"{where}: {name} is ignored: {why}", IgnoredArgumentWarning, stacklevel=4)


def unsupported(where, name, why):
    raise ValueError(f"{where}: {name} is not supported: {why}")


_BY_TYPE = {nn.GELU: "gelu", nn.ReLU: "relu", nn.SiLU: "silu"}
_BY_FUNCTION = {F.gelu: "gelu", F.relu: "relu", F.silu: "silu", torch.relu: "relu"}


def activation_name(where, fn):
    """dynamoe's name for an activation given as a name, module, function or
    lambda (probed on fixed inputs); ValueError for anything else."""
    if fn is None:
        return "gelu"
    if isinstance(fn, str):
        if fn in ("gelu", "relu", "silu"):
            return fn
    elif isinstance(fn, nn.GELU) and getattr(fn, "approximate", "none") != "none":
        pass  # tanh-approximated gelu differs from dynamoe's erf gelu
    elif type(fn) in _BY_TYPE:
        return _BY_TYPE[type(fn)]
    elif fn in _BY_FUNCTION:
        return _BY_FUNCTION[fn]
    elif callable(fn):
        probe = torch.linspace(-4, 4, 97, dtype=torch.float64)
        try:
            out = fn(probe)
        except Exception:  # noqa: BLE001 - any failure means "not one we know"
            out = None
        if isinstance(out, torch.Tensor) and out.shape == probe.shape:
            for name, ref in (("relu", F.relu), ("gelu", F.gelu), ("silu", F.silu)):
                if torch.allclose(out.double(), ref(probe), atol=1e-6):
                    return name
    raise ValueError(f"{where}: activation {fn!r} is not supported: dynamoe's experts compute gelu (erf form), "
                     "relu or silu")


def ffn_spec(expert):
    """(d_hidden, activation, bias) when `expert` is nn.Sequential(Linear(d, h),
    activation, [Dropout(0)], Linear(h, d)); None for any other module."""
    if not isinstance(expert, nn.Sequential):
        return None
    layers = [m for m in expert if not (isinstance(m, nn.Dropout) and m.p == 0)]
    if len(layers) != 3 or not isinstance(layers[0], nn.Linear) or not isinstance(layers[2], nn.Linear):
        return None
    fc1, act, fc2 = layers
    if fc1.in_features != fc2.out_features or fc1.out_features != fc2.in_features:
        return None
    if (fc1.bias is None) != (fc2.bias is None):
        return None
    try:
        name = activation_name("", act)
    except ValueError:
        return None
    return fc1.out_features, name, fc1.bias is not None


def ffn_linears(expert):
    """(fc1, fc2) of an expert that ffn_spec accepted."""
    fc1, fc2 = [m for m in expert if isinstance(m, nn.Linear)]
    return fc1, fc2


def ffn_linear_index(expert):
    """Positions of fc1 and fc2 inside the nn.Sequential (their state_dict keys)."""
    i1, i2 = [i for i, m in enumerate(expert) if isinstance(m, nn.Linear)]
    return i1, i2


def register_state_dict_adapter(layer):
    """Registers a load_state_dict pre-hook that calls layer._rename(state_dict,
    prefix), which turns another library's keys into this layer's in place. The
    hook is a module-level function given the module (with_module=True), so the
    layer still pickles and a deep copy's hook acts on the copy. A foreign
    checkpoint has no expert_bias (dynamoe's selection bias): it starts at 0."""
    layer._register_load_state_dict_pre_hook(_adapter_hook, with_module=True)


def _adapter_hook(layer, state_dict, prefix, *unused):
    before = set(state_dict)
    layer._rename(state_dict, prefix)
    if set(state_dict) != before:
        state_dict.setdefault(prefix + "moe.expert_bias", torch.zeros_like(layer.moe.expert_bias))


def stack_experts(sd, prefix, experts, count, fc1, fc2):
    """Stacks the per-expert nn.Linear tensors sd[f"{experts}{e}.{j}.weight"]
    ([out, in]; e < count; j the Sequential index of fc1 or fc2) and their
    biases into moe.w1/b1/w2/b2 ([in, out]: transposed). Absent keys: nothing."""
    if f"{experts}0.{fc1}.weight" not in sd:
        return
    for j, w, b in ((fc1, "w1", "b1"), (fc2, "w2", "b2")):
        sd[prefix + "moe." + w] = torch.stack([sd.pop(f"{experts}{e}.{j}.weight").t() for e in range(count)])
        if f"{experts}0.{j}.bias" in sd:
            sd[prefix + "moe." + b] = torch.stack([sd.pop(f"{experts}{e}.{j}.bias") for e in range(count)])


def load_ffn(moe, expert):
    """Copies one nn.Sequential FFN's weights into every local expert of moe
    (DeepSpeed deep-copies its expert module, so all experts start equal)."""
    fc1, fc2 = ffn_linears(expert)
    with torch.no_grad():
        moe.w1.copy_(fc1.weight.t().unsqueeze(0).expand_as(moe.w1))
        moe.w2.copy_(fc2.weight.t().unsqueeze(0).expand_as(moe.w2))
        if moe.b1 is not None:
            moe.b1.copy_(fc1.bias.unsqueeze(0).expand_as(moe.b1))
            moe.b2.copy_(fc2.bias.unsqueeze(0).expand_as(moe.b2))


def group_size(group):
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)
