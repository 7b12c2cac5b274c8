"""dynamoe: a load-adaptive Mixture-of-Experts layer for PyTorch.

    import dynamoe
    moe = dynamoe.MoE(d_model=512, d_hidden=2048, num_experts=8, top_k=2)
    y = moe(x)                      # x: [..., 512] -> y: [..., 512]
    loss = task_loss + moe.aux_loss

The layer's names import torch on first use, so torch-free parts (the replay
plots: `python3 -m dynamoe.replay plot DIR`) run on a Python without torch.
"""
import importlib

_LAZY = {
    "MoE": ".moe",
    "load_library": "._ops",
    "communicator": ".distributed",
    "expert_parallel_groups": ".distributed",
    "is_expert_parameter": ".distributed",
    "reduce_gradients": ".distributed",
    "portable_state_dict": ".checkpoint",
    "load_portable_state_dict": ".checkpoint",
    "trace": ".trace",  # the submodule itself: dynamoe.trace.record(model, path)
}
__all__ = ["MoE", "load_library", "config", "config_hash", "communicator", "expert_parallel_groups",
           "is_expert_parameter", "reduce_gradients", "portable_state_dict", "load_portable_state_dict", "trace"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'dynamoe' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if _LAZY[name] == "." + name else getattr(module, "load" if name == "load_library" else name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def config():
    """The validated configuration read from the environment, as 'NAME=value ...'."""
    from ._ops import ops
    return ops().config_describe()


def config_hash():
    """Hash of the settings that must agree across ranks (hex string)."""
    from ._ops import ops
    return ops().config_hash()
