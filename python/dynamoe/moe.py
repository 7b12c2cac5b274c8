"""dynamoe.MoE: the Python face of dynamoe::MoELayer (same parameter names,
keyword names and semantics). Both hold their parameters around one C++
runtime object built once (torch.classes.dynamoe.Layer, scheduler/layer.h):
it validates the options, keeps the step counter, placement and schedule,
applies the expert-bias update and the residual mix, and runs the step."""
import copy
import math

import torch
from torch import nn

from . import distributed
from ._ops import ops


class MoE(nn.Module, distributed.ExpertParallel):
    """A Mixture-of-Experts layer that replaces an MLP: ``[..., d_model] -> [..., d_model]``.

    Parameters: ``gate.weight`` [num_experts, d_model] (and ``gate.bias`` [num_experts] with
    router_bias=True); ``w1`` [E, d_model, d_hidden],
    ``w2`` [E, d_hidden, d_model], ``w3`` (gated=True), ``b1``/``b2`` (bias=True).

    capacity_factor: > 0 fixed capacity max(min_capacity, ceil(top_k*T/E*cf)), overflow
    dropped; 0 dropless; < 0 dropless up to |cf|. normalize_kept: after drops, a token's kept
    weights are rescaled to sum 1 (DeepSpeed top-2). balance_loss_choices: "all" routed choices
    or "first" choices only (DeepSpeed top-2, FastMoE GShard). ``expert``: an nn.Module copied per
    expert, or a callable ``f(expert_idx) -> nn.Module``, called for this rank's experts only (global
    indices): a slower, per-expert path, run inside the same C++ step (no copies, the
    sequential schedule).

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
        ops().config_describe()  # loads the library; reads, validates and logs the environment once
        if not name:  # unique per process, and the same on every rank that builds the same model
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
            self.group = group
            self._comm = distributed.communicator(group)
        # MoEOptions by name: the runtime validates them once, here.
        self._options = dict(
            d_model=d_model, d_hidden=d_hidden, num_experts=num_experts, top_k=top_k,
            capacity_factor=float(capacity_factor),
            eval_capacity_factor=None if eval_capacity_factor is None else float(eval_capacity_factor),
            min_capacity=min_capacity, normalize_topk=(top_k > 1) if normalize_topk is None else bool(normalize_topk),
            normalize_kept=bool(normalize_kept), router_bias=bool(router_bias),
            balance_loss_choices=balance_loss_choices, activation=activation, gated=bool(gated), bias=bool(bias),
            use_rts=bool(use_rts), rts_seed=rts_seed,
            noisy_gate_policy="none" if noisy_gate_policy is None else noisy_gate_policy,
            jitter_eps=float(jitter_eps), balance_loss_weight=float(balance_loss_weight),
            z_loss_weight=float(z_loss_weight), bias_update_rate=float(bias_update_rate),
            use_residual=bool(use_residual), check_finite=bool(check_finite), name=name)
        # Step counter, placement and the records that let an activation-checkpointing
        # recomputation route exactly as the forward it repeats (custom experts: no copies).
        # Kept beside the runtime so that pickles and deep copies carry it.
        self._state = torch.classes.dynamoe.LayerState((placement or "") if expert is None else "none")
        self._schedule = None
        if (schedule, group_size, overlap_degree) != (None, None, None):
            self._schedule = (schedule or "", None if group_size is None else int(group_size),
                              None if overlap_degree is None else int(overlap_degree))
        self._custom, self._layer = expert is not None, None
        self._runtime()
        self.num_local_experts = self._layer.num_local_experts()
        self.first_expert = self._layer.first_expert()
        el = self.num_local_experts
        self.gate = nn.Linear(d_model, num_experts, bias=bool(router_bias))
        self.w1 = self.w2 = self.w3 = self.b1 = self.b2 = None
        self.experts = None
        if expert is not None:
            make = (lambda e: copy.deepcopy(expert)) if isinstance(expert, nn.Module) else expert
            self.experts = nn.ModuleList([make(e) for e in range(self.first_expert, self.first_expert + el)])
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
        self.aux_loss = None
        self._stats = {}
        self.reset_parameters()

    def _runtime(self):
        """The C++ layer (torch.classes.dynamoe.Layer): built once, and again after a
        deep copy or an unpickling, which cannot carry it."""
        if self._layer is None:
            layer = torch.classes.dynamoe.Layer(self._options, self._state, self._comm, self._custom)
            if self._schedule is not None:
                layer.set_schedule(*self._schedule)
            self._layer = layer
        return self._layer

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
        if "_options" not in state:  # pickled before the runtime object: options were plain attributes
            state = dict(state)
            state["_options"] = {k: state.pop(k) for k in (*_FIXED, *_SETTABLE) if k in state}
            kind, gs, od = state.pop("schedule", ""), state.pop("group_size", -1), state.pop("overlap_degree", -1)
            state["_schedule"] = None if (kind, gs, od) == ("", -1, -1) else (kind, None if gs < 0 else gs,
                                                                           None if od < 0 else od)
            state["_custom"] = state.get("_modules", {}).get("experts") is not None
            state["_layer"] = None
        super().__setstate__(state)
        self._mark_expert_parameters()

    def _step_free_dict(self):
        """__dict__ without the last step's graph: aux_loss and the stats'
        tensors are outputs of a forward, not state (and not deep-copyable)."""
        state = dict(self.__dict__)
        state["aux_loss"], state["_layer"] = None, None  # the runtime is rebuilt from the options and the state
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
        size = self.__dict__.get("_ep_size_without_group")
        if size is None:
            raise RuntimeError(f"{self.name}: set_group is for a pickled expert-parallel layer; this one "
                               f"{'has its group' if self._comm is not None else 'runs every expert locally'}")
        comm = distributed.communicator(group)
        if comm.size() != size or comm.rank() != self.__dict__["_ep_rank_without_group"]:
            raise ValueError(f"{self.name}: saved as rank {self._ep_rank_without_group} of an expert-parallel "
                             f"group of {size}, but this group has {comm.size()} ranks and this is rank {comm.rank()}")
        self.group, self._comm, self._layer = group, comm, None
        del self._ep_size_without_group, self._ep_rank_without_group

    @property
    def schedule(self):
        """The schedule in force: "sequential" or "overlap(group_size=4, overlap_degree=2)"."""
        return self._runtime().schedule()

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

    def forward(self, x):
        if "_ep_size_without_group" in self.__dict__:
            raise RuntimeError(
                f"{self.name}: this layer was unpickled without its expert-parallel group (rank "
                f"{self._ep_rank_without_group} of {self._ep_size_without_group}); a pickle cannot carry a "
                "process group: call layer.set_group(group) first, or deep-copy the live model instead")
        layer = self._runtime()
        residual = []
        if self.use_residual:
            residual = [self.residual_fc1.weight, self.residual_fc1.bias, self.residual_fc2.weight,
                        self.residual_fc2.bias, self.residual_coef.weight, self.residual_coef.bias]
        if self.experts is None:
            y, aux, counts, routed, _, stats, losses = layer.forward(
                x, self.gate.weight, self.gate.bias, self.expert_bias, self.w1, self.w2, self.w3, self.b1, self.b2,
                self.training, residual)
        else:  # the same C++ step, stopped around the experts: this rank's modules run on their rows
            pending = layer.dispatch(x, self.gate.weight, self.gate.bias, self.expert_bias, self.training)
            rows, first, outputs, off = pending.rows(), pending.first_expert(), [], 0
            for k, n in enumerate(pending.slot_counts()):
                if n:
                    outputs.append(self.experts[first + k - self.first_expert](rows[off:off + n]))
                off += n
            y, aux, counts, routed, _, stats, losses = layer.finish(pending, outputs, residual)
        stats["plan_hash"] &= 2 ** 64 - 1  # a uint64 travels as int64's bits
        self.aux_loss = aux  # a recomputation's too: a checkpointed function may return it
        if not stats.pop("recomputed"):  # stats describe the step's forward, not its checkpointing recomputation
            del stats["step"]
            self._stats = {"counts": counts, "routed_counts": routed, "_losses": losses, **stats}
        return y

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
                + (f", schedule={self._runtime().schedule()}" if self._schedule is not None else ""))

    def _set_option(self, key, value):
        """An option set after construction (e.g. compat.tutel's capacity per call): a
        new runtime over the same state, validated now; on error nothing changes."""
        if self._options[key] == value and type(self._options[key]) is type(value):
            return  # compat.tutel sets the capacity every call: no new runtime for the same value
        old = self._options, self._layer
        self._options, self._layer = dict(self._options, **{key: value}), None
        try:
            self._runtime()
        except Exception:
            self._options, self._layer = old
            raise


# The options as attributes (moe.top_k, ...). Those that shape parameters or
# name the layer are fixed; the others may be set between steps.
_FIXED = ("d_model", "d_hidden", "num_experts", "activation", "gated", "bias", "router_bias", "use_residual", "name")
_SETTABLE = {"top_k": int, "capacity_factor": float, "eval_capacity_factor": float, "min_capacity": int,
             "normalize_topk": bool, "normalize_kept": bool, "balance_loss_choices": str, "use_rts": bool,
             "rts_seed": int, "noisy_gate_policy": str, "jitter_eps": float, "balance_loss_weight": float,
             "z_loss_weight": float, "bias_update_rate": float, "check_finite": bool}


def _option(key):
    def get(self):
        return self._options[key]

    def set(self, value):
        if key not in _SETTABLE:
            raise AttributeError(f"{self.name}: {key} is fixed at construction")
        if key == "normalize_topk" and value is None:  # as at construction: top_k > 1
            value = self._options["top_k"] > 1
        self._set_option(key, None if value is None else _SETTABLE[key](value))
    return property(get, set, doc=f"The layer's {key} (MoEOptions::{key})")


for _key in (*_FIXED, *_SETTABLE):
    setattr(MoE, _key, _option(_key))
