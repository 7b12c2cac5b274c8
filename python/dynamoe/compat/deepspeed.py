"""DeepSpeed-MoE's layer (``deepspeed.moe.layer.MoE``) over dynamoe.MoE.

    from dynamoe.compat.deepspeed import MoE      # was: from deepspeed.moe.layer import MoE
    moe = MoE(hidden_size=512, expert=nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512)),
              num_experts=8, ep_size=2, k=2)
    output, l_aux, exp_counts = moe(hidden_states)

``expert`` is deep-copied into every expert, as DeepSpeed does. An expert of
the form nn.Sequential(Linear(d, h), GELU/ReLU/SiLU, Linear(h, d)) runs on
dynamoe's fused FFN path; any other module runs on the per-expert path (each
rank holds copies of its num_experts / ep_size experts only).
"""
import torch
from torch import nn

from ..distributed import expert_parallel_groups
from ..moe import MoE as _DynamoeMoE
from ._common import (ffn_linear_index, ffn_linears, ffn_spec, group_size, ignored, load_ffn, stack_experts,
                      register_state_dict_adapter, unsupported)


class MoE(nn.Module):
    def __init__(self, hidden_size, expert, num_experts=1, ep_size=1, k=1, capacity_factor=1.0,
                 eval_capacity_factor=1.0, min_capacity=4, use_residual=False, noisy_gate_policy=None,
                 drop_tokens=True, use_rts=True, use_tutel=False, enable_expert_tensor_parallelism=False):
        super().__init__()
        where = "dynamoe.compat.deepspeed.MoE"
        if num_experts % ep_size != 0:
            raise ValueError(f"{where}: num_experts ({num_experts}) must be divisible by ep_size ({ep_size})")
        if k not in (1, 2):
            raise ValueError(f"{where}: k must be 1 or 2 (DeepSpeed's top-1 and top-2 gating), got {k}")
        if noisy_gate_policy not in (None, "None", "Jitter", "RSample"):
            raise ValueError(f"{where}: noisy_gate_policy must be None, 'Jitter' or 'RSample', "
                             f"got {noisy_gate_policy!r}")
        if enable_expert_tensor_parallelism:
            unsupported(where, "enable_expert_tensor_parallelism=True", "experts are not sliced over ranks")
        if use_tutel:
            ignored(where, "use_tutel", "dynamoe's own kernels do the dispatch and combine")
        self.ep_size, self.num_experts, self.num_local_experts = ep_size, num_experts, num_experts // ep_size
        group = expert_parallel_groups(ep_size)[0] if ep_size > 1 else None
        if group is not None and group_size(group) != ep_size:
            raise ValueError(f"{where}: ep_size={ep_size} but the group has {group_size(group)} ranks")
        policy = None if noisy_gate_policy == "None" else noisy_gate_policy
        if k == 2 and policy == "RSample":  # DeepSpeed applies RSample in its top-1 gate only
            policy = None
        # Top-2 as DeepSpeed's top2gating: l_aux counts first choices (mean(me * ce) * E * E), the
        # kept gates are renormalised after capacity drops, and RTS (a top-1 feature) is off.
        kw = dict(top_k=k, capacity_factor=float(capacity_factor) if drop_tokens else 0.0,
                  eval_capacity_factor=float(eval_capacity_factor) if drop_tokens else 0.0,
                  min_capacity=min_capacity, use_residual=use_residual, use_rts=bool(use_rts) and k == 1,
                  noisy_gate_policy=policy, group=group, normalize_kept=k == 2,
                  balance_loss_choices="first" if k == 2 else "all", name="deepspeed_moe")
        spec = ffn_spec(expert)
        self.k = k
        self._linear_index = ffn_linear_index(expert) if spec is not None else None
        if spec is not None:
            d_hidden, activation, bias = spec
            self.moe = _DynamoeMoE(hidden_size, d_hidden, num_experts, activation=activation, bias=bias, **kw)
            load_ffn(self.moe, expert)
        else:
            self.moe = _DynamoeMoE(hidden_size, 1, num_experts, expert=expert, **kw)
        if use_residual:  # DeepSpeed's residual MLP starts as a copy of the expert
            if spec is None:
                unsupported(where, "use_residual with a custom expert module",
                            "the residual MLP is an FFN; pass an nn.Sequential(Linear, activation, Linear) expert")
            fc1, fc2 = ffn_linears(expert)
            with torch.no_grad():
                for mine, theirs in ((self.moe.residual_fc1, fc1), (self.moe.residual_fc2, fc2)):
                    mine.weight.copy_(theirs.weight)
                    mine.bias.copy_(theirs.bias if theirs.bias is not None else torch.zeros_like(mine.bias))

        # Checkpoints of deepspeed.moe.layer.MoE load as they are (see _rename).
        register_state_dict_adapter(self)

    def _rename(self, sd, prefix):
        """DeepSpeed's keys (deepspeed_moe.gate.wg, deepspeed_moe.experts.deepspeed_experts.{i}.*,
        mlp.*, coefficient.*) renamed or stacked into this layer's."""
        moved = {"deepspeed_moe.gate.wg.weight": "moe.gate.weight", "coefficient.weight": "moe.residual_coef.weight",
                 "coefficient.bias": "moe.residual_coef.bias"}
        experts = prefix + "deepspeed_moe.experts.deepspeed_experts."
        if self._linear_index is None:  # custom experts: one module per expert, same inner keys
            for key in [k for k in sd if k.startswith(experts)]:
                sd[prefix + "moe.experts." + key[len(experts):]] = sd.pop(key)
        else:
            i1, i2 = self._linear_index
            stack_experts(sd, prefix, experts, self.num_local_experts, i1, i2)
            for j, mine in ((i1, "residual_fc1"), (i2, "residual_fc2")):
                for part in ("weight", "bias"):
                    moved[f"mlp.{j}.{part}"] = f"moe.{mine}.{part}"
                weight = sd.get(f"{prefix}mlp.{j}.weight")
                if weight is not None and f"{prefix}mlp.{j}.bias" not in sd:  # a bias-free expert: its copy's bias is 0
                    sd[f"{prefix}mlp.{j}.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
        for theirs, mine in moved.items():
            if prefix + theirs in sd:
                sd[prefix + mine] = sd.pop(prefix + theirs)

    def forward(self, hidden_states, used_token=None):
        """Returns (output, l_aux, exp_counts): the output in the input's shape,
        the balance loss, and per expert the tokens of this rank whose first
        choice it was (before capacity), on the CPU, as DeepSpeed's gate counts them."""
        if used_token is not None:
            unsupported("dynamoe.compat.deepspeed.MoE.forward", "used_token", "masked tokens change the routing")
        output = self.moe(hidden_states)
        if self.k == 1:  # the routed choice itself (RSample noise included), before capacity
            exp_counts = self.moe.stats()["routed_counts"].reshape(-1)
        else:
            with torch.no_grad():  # top2gating's first choice: the argmax of the noise-free logits
                x = hidden_states.reshape(-1, hidden_states.shape[-1])
                logits = x.float() @ self.moe.gate.weight.float().t() + self.moe.expert_bias
                exp_counts = torch.bincount(logits.argmax(-1), minlength=self.num_experts)
        return output, self.moe.aux_loss, exp_counts.cpu()
