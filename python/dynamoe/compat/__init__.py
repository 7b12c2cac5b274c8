"""Drop-in layers for jobs written against FastMoE, DeepSpeed-MoE or Tutel.

Change one import and keep the launch command and environment variables:

    from dynamoe.compat.fastmoe import FMoETransformerMLP     # was: from fmoe import FMoETransformerMLP
    from dynamoe.compat.deepspeed import MoE                  # was: from deepspeed.moe.layer import MoE
    from dynamoe.compat import tutel                          # was: from tutel import moe as tutel_moe
    layer = tutel.moe_layer(gate_type={"type": "top", "k": 2}, model_dim=512, experts={...})

Each adapter is a thin module over dynamoe.MoE (its ``.moe``). Arguments that
mean nothing here are accepted with an IgnoredArgumentWarning that says so;
arguments that would change results and are not supported raise ValueError.
The README's compatibility table lists both.
"""
from ._common import IgnoredArgumentWarning

__all__ = ["IgnoredArgumentWarning", "fastmoe", "deepspeed", "tutel"]
