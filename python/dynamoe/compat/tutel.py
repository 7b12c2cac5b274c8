"""Tutel's ``tutel.moe.moe_layer`` over dynamoe.MoE.

    from dynamoe.compat import tutel as tutel_moe     # was: from tutel import moe as tutel_moe
    moe = tutel_moe.moe_layer(
        gate_type={"type": "top", "k": 2, "capacity_factor": 0.0},
        model_dim=512,
        experts={"type": "ffn", "count_per_node": 2, "hidden_size_per_expert": 2048,
                 "activation_fn": lambda x: torch.nn.functional.relu(x)},
        scan_expert_func=lambda name, param: setattr(param, "skip_allreduce", True))
    y = moe(x)            # x: [..., model_dim]; y.l_aux is the balance loss

``count_per_node`` is experts per rank of ``group`` (default the world).
Capacity factor: > 0 fixed, 0 dropless, < 0 dropless up to |factor| (Tutel's
meanings). Every expert parameter gets ``skip_allreduce = True`` (data-parallel
all-reduce must skip them) before ``scan_expert_func`` sees it.
"""
from torch import nn
import torch.distributed as dist

from ..moe import MoE
from ._common import activation_name, group_size, ignored, register_state_dict_adapter, unsupported

_GATE_KEYS = {"type", "k", "capacity_factor", "gate_noise", "fp32_gate", "normalize_gate"}


class MoELayer(nn.Module):
    def __init__(self, gate_type, model_dim, experts, scan_expert_func=None, result_func=None, group=None,
                 a2a_ffn_overlap_degree=1, seeds=None, parallel_type="auto", pad_samples=False, is_postscore=True,
                 batch_prioritized_routing=False, use_2dh=False, is_gshard_loss=True, **kwargs):
        super().__init__()
        where = "dynamoe.compat.tutel.moe_layer"
        if isinstance(gate_type, (list, tuple)):
            if len(gate_type) != 1:
                unsupported(where, "several gates", "one router per layer")
            gate_type = gate_type[0]
        gate_type = dict(gate_type)
        if gate_type.get("type", "top") != "top":
            unsupported(where, f"gate_type type={gate_type['type']!r}", "only 'top' (top-k) routing")
        unknown = set(gate_type) - _GATE_KEYS
        if unknown:
            unsupported(where, f"gate_type keys {sorted(unknown)}", f"known keys are {sorted(_GATE_KEYS)}")
        if int(gate_type.get("k", 1)) < 1:
            unsupported(where, f"k={gate_type['k']}", "a negative k slices one expert over several ranks")
        if gate_type.get("gate_noise", 0.0):
            unsupported(where, "gate_noise > 0", "dynamoe's noise policies are DeepSpeed's Jitter and RSample")
        experts = dict(experts)
        if experts.get("type", "ffn") != "ffn":
            unsupported(where, f"experts type={experts['type']!r}", "only 'ffn' experts (use dynamoe.MoE(expert=...))")
        per_rank = int(experts.get("count_per_node", 1))
        if per_rank < 1:
            unsupported(where, f"count_per_node={per_rank}", "one expert sliced over several ranks")
        bias = {bool(experts.get("has_fc1_bias", True)), bool(experts.get("has_fc2_bias", True))}
        if len(bias) != 1:
            unsupported(where, "has_fc1_bias != has_fc2_bias", "both expert linears have biases or neither")
        unknown = set(experts) - {"type", "count_per_node", "hidden_size_per_expert", "activation_fn", "has_fc1_bias",
                                  "has_fc2_bias"}
        if unknown:
            unsupported(where, f"experts keys {sorted(unknown)}", "not known to dynamoe")
        for arg, value, why in (("is_postscore=False", not is_postscore, "scores apply after the experts"),
                                ("batch_prioritized_routing=True", batch_prioritized_routing,
                                 "capacity keeps first choices first, then token order"),
                                ("is_gshard_loss=False", not is_gshard_loss, "the balance loss is GShard's")):
            if value:
                unsupported(where, arg, why)
        for arg, value, why in (("seeds", seeds is not None, "seed torch before building the layer"),
                                ("use_2dh", use_2dh, "the all-to-all is not hierarchical"),
                                ("pad_samples", pad_samples, "token counts may differ between ranks"),
                                (f"parallel_type={parallel_type!r}", parallel_type != "auto",
                                 "experts are always expert-parallel over the group"),
                                ("fp32_gate", "fp32_gate" in gate_type, "the router always runs in fp32"),
                                (", ".join(sorted(kwargs)), bool(kwargs), "not known to dynamoe")):
            if value:
                ignored(where, arg, why)
        if group is None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            group = dist.group.WORLD
        ranks = group_size(group) if group is not None else 1
        self.num_global_experts = per_rank * ranks
        self.result_func = result_func
        # Tutel's defaults: k=1, capacity_factor=1.0, relu experts, gates renormalised over the k
        # choices (normalize_gate), GShard's loss over first choices.
        self.top_k = int(gate_type.get("k", 1))
        self.tutel_capacity_factor = float(gate_type.get("capacity_factor", 1.0))
        activation = experts.get("activation_fn")
        self.moe = MoE(model_dim, int(experts["hidden_size_per_expert"]), self.num_global_experts,
                       top_k=self.top_k, capacity_factor=self.tutel_capacity_factor, min_capacity=0,
                       normalize_topk=self.top_k > 1 and bool(gate_type.get("normalize_gate", True)),
                       balance_loss_choices="first",
                       activation="relu" if activation is None else activation_name(where, activation), bias=bias.pop(),
                       group=group if ranks > 1 else None, name="tutel_moe",
                       # degree > 1: the chunked schedule with that many token chunks per peer group
                       schedule="overlap" if a2a_ffn_overlap_degree > 1 else None,
                       overlap_degree=max(1, int(a2a_ffn_overlap_degree)))
        expert_ids = {id(p) for p in self.moe.expert_parameters()}
        for name, p in self.moe.named_parameters():
            if id(p) in expert_ids:
                p.skip_allreduce = True
                if scan_expert_func is not None:
                    scan_expert_func(name, p)

        register_state_dict_adapter(self)

    def _rename(self, sd, prefix):
        """Tutel's keys into this layer's: gates.0.wg.weight (the router),
        experts.batched_fc1_w [E_local, hidden, model] (w1 transposed),
        experts.batched_fc2_w [E_local, hidden, model] (w2 as is), *_bias."""
        for buffer in ("_num_global_experts", "_max_num_global_experts"):  # Tutel's bookkeeping buffers
            if prefix + buffer in sd:
                count = int(sd.pop(prefix + buffer))
                if buffer == "_num_global_experts" and count != self.num_global_experts:
                    raise ValueError(f"dynamoe.compat.tutel: the checkpoint has {count} global experts, "
                                     f"this layer {self.num_global_experts}")
        for theirs, mine, transpose in (("gates.0.wg.weight", "gate.weight", False),
                                        ("experts.batched_fc1_w", "w1", True), ("experts.batched_fc2_w", "w2", False),
                                        ("experts.batched_fc1_bias", "b1", False),
                                        ("experts.batched_fc2_bias", "b2", False)):
            if prefix + theirs in sd:
                t = sd.pop(prefix + theirs)
                sd[prefix + "moe." + mine] = t.transpose(1, 2) if transpose else t

    def _set_capacity(self, num_tokens):
        """Tutel's capacity, top_k * int(|f| * ceil(T / E)) rows per expert, as the
        dynamoe factor whose ceil(top_k * T / E * f') lands on it (the 0.5 keeps
        rounding off the boundary). 0 (dropless) passes through."""
        f, k, e = self.tutel_capacity_factor, self.top_k, self.num_global_experts
        if f == 0 or num_tokens == 0:
            self.moe.capacity_factor = f
            return
        cap = k * int(abs(f) * ((num_tokens + e - 1) // e))
        factor = (cap - 0.5) * e / (k * num_tokens) if cap > 0 else 1e-12
        self.moe.capacity_factor = factor if f > 0 else -factor

    def forward(self, x):
        self._set_capacity(x.numel() // x.shape[-1] if x.dim() else 0)
        y = self.moe(x)
        y.l_aux = self.moe.aux_loss
        if self.result_func is not None:
            return self.result_func(y)
        return y


def moe_layer(gate_type, model_dim, experts, **kwargs):
    """Tutel's constructor name."""
    return MoELayer(gate_type, model_dim, experts, **kwargs)
