"""dynamoe.MoE: the Python face of dynamoe::MoELayer (same parameter names,
keyword names and semantics; both run the same C++ step)."""
import copy
import math
import time

import torch
from torch import nn

from ._ops import ops


_ACTIVATIONS = {"gelu": nn.functional.gelu, "relu": nn.functional.relu, "silu": nn.functional.silu}


class MoE(nn.Module):
    """A Mixture-of-Experts layer that replaces an MLP: ``[..., d_model] -> [..., d_model]``.

    Parameters: ``gate.weight`` [num_experts, d_model] (and ``gate.bias`` [num_experts] with
    router_bias=True); ``w1`` [E, d_model, d_hidden],
    ``w2`` [E, d_hidden, d_model], ``w3`` (gated=True), ``b1``/``b2`` (bias=True).

    capacity_factor: > 0 fixed capacity max(min_capacity, ceil(top_k*T/E*cf)), overflow
    dropped; 0 dropless; < 0 dropless up to |cf|. normalize_kept: after drops, a token's kept
    weights are rescaled to sum 1 (DeepSpeed top-2). balance_loss_choices: "all" routed choices
    or "first" choices only (DeepSpeed top-2, FastMoE GShard). ``expert``: an nn.Module copied per
    expert, or a callable ``f(expert_idx) -> nn.Module`` (a slower, per-expert path).

    Expert parallelism: ``group=pg`` (a torch.distributed group) or ``ep_size=k``
    (consecutive ranks). Rank r of the group then holds experts
    [r*E_local, (r+1)*E_local) and w1..b2 are [E_local, ...]; call
    ``dynamoe.reduce_gradients(model)`` after backward (see dynamoe/distributed.py).

    Placement: ``placement=`` (none, fastermoe, adaptive, eplb) or DYNAMOE_PLACEMENT picks
    the policy that copies hot experts to other ranks; stats() reports the plan.

    Schedule: ``schedule=`` ("sequential" or "overlap"), ``group_size=`` and ``overlap_degree=``
    override DYNAMOE_SCHEDULE, DYNAMOE_GROUP_SIZE and DYNAMOE_OVERLAP_DEGREE for this layer:
    "overlap" pipelines the token all-to-all with the expert compute, forward and backward.
    """

    def __init__(self, d_model, d_hidden, num_experts, top_k=2, capacity_factor=0.0,
                 eval_capacity_factor=None, min_capacity=4, normalize_topk=None, activation="gelu",
                 gated=False, bias=False, use_rts=False, rts_seed=0, noisy_gate_policy=None,
                 jitter_eps=0.01, balance_loss_weight=1.0, z_loss_weight=0.0, bias_update_rate=0.0,
                 use_residual=False, check_finite=True, expert=None, name=None, group=None, ep_size=None,
                 placement=None, schedule=None, group_size=None, overlap_degree=None, router_bias=False,
                 normalize_kept=False, balance_loss_choices="all"):
        super().__init__()
        from . import distributed
        if name is None:  # unique per process, and the same on every rank that builds the same model
            name = ops().default_layer_name()
        self.group, self._comm = None, None
        if ep_size is not None:
            if group is not None:
                raise ValueError(f"{name}: pass group= or ep_size=, not both")
            group = distributed.expert_parallel_groups(int(ep_size))[0]
        if group is not None:
            size = torch.distributed.get_world_size(group)
            if num_experts % size != 0:
                raise ValueError(f"{name}: num_experts={num_experts} must be divisible by the expert-parallel "
                                 f"group size {size}")
            if expert is not None:
                raise ValueError(f"{name}: custom experts with expert parallelism are available from C++ "
                                 "(dynamoe::MoELayer with an ExpertFactory) only; use the built-in FFN experts")
            self.group = group
            self._comm = distributed.communicator(group)
        noisy_gate_policy = "none" if noisy_gate_policy is None else noisy_gate_policy
        ops().validate_options(d_model, d_hidden, num_experts, top_k, float(capacity_factor),
                               None if eval_capacity_factor is None else float(eval_capacity_factor),
                               min_capacity, activation, noisy_gate_policy, float(jitter_eps),
                               float(balance_loss_weight), float(z_loss_weight), float(bias_update_rate), name,
                               balance_loss_choices)
        ops().config_describe()  # read, validate and log the environment once
        self.d_model, self.d_hidden, self.num_experts, self.top_k = d_model, d_hidden, num_experts, top_k
        self.capacity_factor = float(capacity_factor)
        self.eval_capacity_factor = eval_capacity_factor
        self.min_capacity = min_capacity
        self.normalize_topk = (top_k > 1) if normalize_topk is None else bool(normalize_topk)
        self.activation, self.gated, self.bias = activation, gated, bias
        self.use_rts, self.rts_seed = use_rts, rts_seed
        self.noisy_gate_policy, self.jitter_eps = noisy_gate_policy, float(jitter_eps)
        self.balance_loss_weight, self.z_loss_weight = float(balance_loss_weight), float(z_loss_weight)
        self.bias_update_rate = float(bias_update_rate)
        self.use_residual, self.check_finite, self.name = use_residual, check_finite, name
        self.normalize_kept, self.balance_loss_choices = bool(normalize_kept), balance_loss_choices

        self.num_local_experts = num_experts // self._comm.size() if self._comm is not None else num_experts
        self.first_expert = self._comm.rank() * self.num_local_experts if self._comm is not None else 0
        el = self.num_local_experts
        self.gate = nn.Linear(d_model, num_experts, bias=bool(router_bias))
        self.w1 = self.w2 = self.w3 = self.b1 = self.b2 = None
        self.experts = None
        if expert is not None:
            make = (lambda e: copy.deepcopy(expert)) if isinstance(expert, nn.Module) else expert
            self.experts = nn.ModuleList([make(e) for e in range(num_experts)])
        else:
            self.w1 = nn.Parameter(torch.empty(el, d_model, d_hidden))
            self.w2 = nn.Parameter(torch.empty(el, d_hidden, d_model))
            if gated:
                self.w3 = nn.Parameter(torch.empty(el, d_model, d_hidden))
            if bias:
                self.b1 = nn.Parameter(torch.empty(el, d_hidden))
                self.b2 = nn.Parameter(torch.empty(el, d_model))
        self._mark_expert_parameters()
        self.register_buffer("expert_bias", torch.zeros(num_experts))
        if use_residual:
            self.residual_fc1 = nn.Linear(d_model, d_hidden)
            self.residual_fc2 = nn.Linear(d_hidden, d_model)
            self.residual_coef = nn.Linear(d_model, 2)
        if schedule not in (None, "sequential", "overlap"):
            raise ValueError(f'{name}: schedule must be "sequential" or "overlap", got {schedule!r}')
        if group_size is not None and int(group_size) < 1:
            raise ValueError(f"{name}: group_size must be >= 1, got {group_size}")
        if overlap_degree is not None and not 0 <= int(overlap_degree) <= 64:
            raise ValueError(f"{name}: overlap_degree must be in [0, 64] (0: from the cost model), "
                             f"got {overlap_degree}")
        self.schedule = schedule or ""
        self.group_size = -1 if group_size is None else int(group_size)
        self.overlap_degree = -1 if overlap_degree is None else int(overlap_degree)
        # Step counter, placement and the records that let an activation-checkpointing
        # recomputation route exactly as the forward it repeats (custom experts: no copies).
        self._state = torch.classes.dynamoe.LayerState((placement or "") if expert is None else "none")
        self.aux_loss = None
        self._stats = {}
        self.reset_parameters()

    # Pickling (torch.save(model), copy.deepcopy, swa_utils.AveragedModel). A deep
    # copy shares the expert-parallel group and communicator (process-wide
    # objects); a pickle cannot carry them: the loaded layer refuses to run
    # until set_group() gives it a group of the same size.
    def __deepcopy__(self, memo):
        for shared in (self.group, self._comm):
            if shared is not None:
                memo[id(shared)] = shared
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self._step_free_dict().items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        new._mark_expert_parameters()
        return new

    def _mark_expert_parameters(self):
        # torch 1.13's Parameter deepcopy/pickle drops Python attributes: set the mark again.
        for p in self.expert_parameters():
            p._dynamoe_expert = True

    def __setstate__(self, state):
        super().__setstate__(state)
        self._mark_expert_parameters()

    def _step_free_dict(self):
        """__dict__ without the last step's graph: aux_loss and the stats'
        tensors are outputs of a forward, not state (and not deep-copyable)."""
        state = dict(self.__dict__)
        state["aux_loss"] = None
        state["_stats"] = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in self._stats.items()}
        return state

    def __getstate__(self):
        state = self._step_free_dict()
        if self._comm is not None:
            state["_ep_size_without_group"] = self._comm.size()
            state["_ep_rank_without_group"] = self._comm.rank()
        state["group"], state["_comm"] = None, None
        return state

    def set_group(self, group):
        """Gives a layer loaded from a pickle its expert-parallel group back (the
        same size and this rank's position as when it was saved)."""
        from . import distributed
        size = self.__dict__.get("_ep_size_without_group")
        if size is None:
            raise RuntimeError(f"{self.name}: set_group is for a pickled expert-parallel layer; this one "
                               f"{'has its group' if self._comm is not None else 'runs every expert locally'}")
        comm = distributed.communicator(group)
        if comm.size() != size or comm.rank() != self.__dict__["_ep_rank_without_group"]:
            raise ValueError(f"{self.name}: saved as rank {self._ep_rank_without_group} of an expert-parallel "
                             f"group of {size}, but this group has {comm.size()} ranks and this is rank {comm.rank()}")
        self.group, self._comm = group, comm
        del self._ep_size_without_group, self._ep_rank_without_group

    @property
    def step(self):
        """Training forwards so far; a checkpointing recomputation does not count."""
        return self._state.step()

    def reset_parameters(self):
        """Each expert initialised like nn.Linear(d_model, d_hidden) / (d_hidden, d_model)."""
        in1, in2 = 1.0 / math.sqrt(self.d_model), 1.0 / math.sqrt(self.d_hidden)
        with torch.no_grad():
            for p, bound in ((self.w1, in1), (self.w3, in1), (self.w2, in2), (self.b1, in1), (self.b2, in2)):
                if p is not None:
                    p.uniform_(-bound, bound)

    def expert_parameters(self):
        """This rank's expert parameters (w1, w2, w3, b1, b2 or the custom experts')."""
        if self.experts is not None:
            return list(self.experts.parameters())
        return [p for p in (self.w1, self.w2, self.w3, self.b1, self.b2) if p is not None]

    def _capacity_factor(self):
        if self.training or self.eval_capacity_factor is None:
            return self.capacity_factor
        return float(self.eval_capacity_factor)

    def forward(self, x):
        if "_ep_size_without_group" in self.__dict__:
            raise RuntimeError(
                f"{self.name}: this layer was unpickled without its expert-parallel group (rank "
                f"{self._ep_rank_without_group} of {self._ep_size_without_group}); a pickle cannot carry a "
                "process group: call layer.set_group(group) first, or deep-copy the live model instead")
        if self.experts is None:
            y, aux, counts, routed, _, stats, losses = ops().moe_forward(
                x, self.gate.weight, self.expert_bias, self.w1, self.w2, self.w3, self.b1, self.b2,
                self.activation, self.top_k, self._capacity_factor(), self.min_capacity, self.normalize_topk,
                self.use_rts, self.rts_seed, self.noisy_gate_policy, self.jitter_eps, self.balance_loss_weight,
                self.z_loss_weight, self.bias_update_rate, self.check_finite, self.training, self.name,
                self._state, self._comm, self.schedule, self.group_size, self.overlap_degree, self.gate.bias,
                self.normalize_kept, self.balance_loss_choices)
            stats["plan_hash"] &= 2 ** 64 - 1  # a uint64 travels as int64's bits
        else:
            y, aux, counts, routed, stats = self._custom_forward(x)
            losses = None
        self.aux_loss = aux  # a recomputation's too: a checkpointed function may return it
        if not stats.pop("recomputed"):  # stats describe the step's forward, not its checkpointing recomputation
            del stats["step"]
            self._stats = {"counts": counts, "routed_counts": routed, "_losses": losses, **stats}
        if self.use_residual:
            coef = torch.softmax(self.residual_coef(x), -1)
            mlp = self.residual_fc2(_ACTIVATIONS[self.activation](self.residual_fc1(x)))
            y = y * coef[..., 0:1] + mlp * coef[..., 1:2]
        return y

    def _custom_forward(self, x):
        """Slower path for user expert modules: route, dispatch, one call per expert, combine."""
        if x.dim() < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"{self.name}: x must have shape [..., d_model={self.d_model}], got {list(x.shape)}")
        t0 = time.perf_counter()
        x2 = x.reshape(-1, self.d_model)
        # The same step, bias and side effects as the built-in path (LayerState).
        forward_id, step, recomputed, bias = self._state.begin_forward(self.training, self.name, self.expert_bias)
        idx, weight, pos, kept, routed, balance, z = ops().route(
            x2, self.gate.weight, bias, self.top_k, self._capacity_factor(), self.min_capacity,
            self.normalize_topk, self.use_rts, self.rts_seed, step, self.noisy_gate_policy,
            self.jitter_eps, self.check_finite, self.training, self.name, self.gate.bias, self.normalize_kept,
            self.balance_loss_choices)
        t1 = time.perf_counter()
        rows = ops().dispatch(x2, pos)
        t2 = time.perf_counter()
        outs, off = [], 0
        for e, n in enumerate(kept.tolist()):
            if n:
                out = self.experts[e](rows[off:off + n])
                if out.shape != (n, self.d_model):
                    raise ValueError(f"{self.name}: custom expert {e} must return shape [{n}, {self.d_model}], "
                                     f"got {list(out.shape)}")
                outs.append(out.to(rows.dtype))
            off += n
        out_rows = torch.cat(outs) if outs else rows * 0
        t3 = time.perf_counter()
        y = ops().combine(out_rows, weight, pos).view(x.shape)
        t4 = time.perf_counter()
        aux = balance * self.balance_loss_weight
        if self.z_loss_weight > 0:
            aux = aux + z * self.z_loss_weight
        if self.training and not recomputed:
            self._state.commit_forward(forward_id, step, self.expert_bias, self.bias_update_rate, routed)
        # The keys moe_forward's stats carry (stats_dict.h); no placement, no exchange.
        stats = {"step": step, "recomputed": recomputed, "dropped": x2.shape[0] * self.top_k - int(kept.sum()),
                 "capacity": ops().expert_capacity(x2.shape[0], self.top_k, self.num_experts,
                                                   self._capacity_factor(), self.min_capacity),
                 "balance_loss": balance.item(), "z_loss": z.item(),
                 "phase_seconds": {"gate": t1 - t0, "dispatch": t2 - t1, "experts": t3 - t2, "combine": t4 - t3},
                 "bytes_sent": 0, "bytes_received": 0, "comm_seconds": 0.0, "shadowed": [],
                 "replicas": [0] * self.num_experts, "plan_hash": 0, "predicted_step_seconds": 0.0,
                 "weight_bytes_sent": 0, "weight_bytes_received": 0, "overlapped": False, "pipeline_stages": 0,
                 "cost_model": None}
        return y, aux, kept.unsqueeze(0), routed, stats

    def stats(self):
        """Last step: counts [ep_size, E] int64 (rows each rank sent to each expert), routed_counts
        (this rank's, before capacity), dropped, capacity, losses, phase_seconds, bytes_sent,
        bytes_received, comm_seconds; placement: shadowed (experts copied to every rank), replicas
        ([E] copies per expert beyond its owner), plan_hash (same on every rank),
        predicted_step_seconds (the cost model's), weight_bytes_sent/received; schedule:
        overlapped (the overlap pipeline ran) and pipeline_stages (stages that moved rows, at most
        peer groups x token chunks); cost_model: the placement cost model's rates in use (flops,
        intra/inter_node_bytes_per_second, intra/inter_node_latency_seconds; fitted under
        DYNAMOE_CALIBRATE=online, else the configured ones), calibrating, and with calibration
        fixed_seconds, error (median relative error of the predicted forward over recent steps, each
        predicted before it joined the fit; None before the first) and fitted_steps."""
        s = dict(self._stats)
        losses = s.pop("_losses", None)
        if losses is not None and math.isnan(s["balance_loss"]):  # on a GPU: read only when asked
            s["balance_loss"], s["z_loss"] = losses.tolist()
        return s

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_hidden={self.d_hidden}, num_experts={self.num_experts}, "
                f"top_k={self.top_k}, capacity_factor={self.capacity_factor}, activation={self.activation}, "
                f"gated={self.gated}" + (f", ep_size={self._comm.size()}" if self._comm is not None else "")
                + (f", placement={self._state.policy()}" if self.experts is None else "")
                + (f", schedule={self.schedule}" if self.schedule else ""))
