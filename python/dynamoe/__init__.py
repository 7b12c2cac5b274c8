"""dynamoe: a load-adaptive Mixture-of-Experts layer for PyTorch.

    import dynamoe
    moe = dynamoe.MoE(d_model=512, d_hidden=2048, num_experts=8, top_k=2)
    y = moe(x)                      # x: [..., 512] -> y: [..., 512]
    loss = task_loss + moe.aux_loss
"""
from ._ops import load as load_library
from .moe import MoE
from .distributed import communicator, expert_parallel_groups, is_expert_parameter, reduce_gradients

__all__ = ["MoE", "load_library", "config", "config_hash", "communicator", "expert_parallel_groups",
           "is_expert_parameter", "reduce_gradients"]


def config():
    """The validated configuration read from the environment, as 'NAME=value ...'."""
    from ._ops import ops
    return ops().config_describe()


def config_hash():
    """Hash of the settings that must agree across ranks (hex string)."""
    from ._ops import ops
    return ops().config_hash()
