"""Record the routing of any PyTorch MoE model as a dynamoe trace.

    import dynamoe.trace
    with dynamoe.trace.record(model, "run.dmtrace"):
        for batch in batches:
            model(batch)
    # then: dynamoe-replay run run.dmtrace

Forward hooks on each router take the top-k expert indices of every call
(a step of that layer), copy them off the GPU asynchronously (into pinned
memory, with an event) and hand them to a background thread, which counts
them per expert and appends batches of step records to the file in the
dynamoe trace format (docs/trace-format.md, version 2, checksummed frames).

Routers found by class: Hugging Face transformers' Mixtral, OLMoE and
Qwen2-MoE / Qwen3-MoE sparse MoE blocks (their output carries the router
logits). Any other module is named with an adapter: a function from
(module, output) to a [tokens, k] tensor of expert indices.

Under torch.distributed each rank writes `<path without .dmtrace>.rank<R>.dmtrace`
holding its own tokens: a 1-row count matrix per step, whose header names the
rank. `dynamoe-replay run PATH` (the path given here, which itself does not
exist) merges every rank's file of the job into one trace of N ranks, row R
rank R's tokens; a file of one rank replays alone as a 1-rank trace.

Forward calls made during a backward pass (activation checkpointing /
recompute runs the forward again) are not steps: the hook skips them.
"""
import atexit
import os
import queue
import struct
import threading
import zlib

__all__ = ["record", "Recorder", "KNOWN_ROUTERS"]

_MAGIC = b"DMOETRC\n"
_VERSION = 2
_SYNC = b"\xa7REC"
_STEP_RECORD = 2

# Hugging Face sparse MoE blocks whose forward returns (hidden_states, router_logits).
KNOWN_ROUTERS = ("MixtralSparseMoeBlock", "OlmoeSparseMoeBlock", "Qwen2MoeSparseMoeBlock",
                 "Qwen3MoeSparseMoeBlock")


def _frame(payload):
    head = struct.pack("<II", len(payload), zlib.crc32(payload))
    return _SYNC + head + struct.pack("<I", zlib.crc32(head)) + payload


def _str(s):
    b = s.encode("utf-8")
    return struct.pack("<I", len(b)) + b


def _layer_spec(name, num_experts, d_model, d_hidden, gated, bias, bytes_per_element):
    return (_str(name) + struct.pack("<III", num_experts, d_model, d_hidden) + struct.pack("<BB", gated, bias) +
            struct.pack("<I", bytes_per_element))


def _header(rank, layers):
    body = struct.pack("<Ii", 1, rank) + struct.pack("<I", 0)  # one row (this rank's); no phase timings
    body += struct.pack("<I", len(layers)) + b"".join(_layer_spec(**l) for l in layers)
    return _MAGIC + struct.pack("<I", _VERSION) + _frame(body)


def _step_record(step, layer, counts):
    """counts: a list of E ints, this rank's assignments per expert (kept == routed)."""
    e = len(counts)
    row = struct.pack(f"<{e}q", *counts)
    return _frame(struct.pack("<BqIII", _STEP_RECORD, step, layer, 1, e) + row + row + struct.pack("<BI", 0, 0))


def _hf_indices(module, output):
    import torch
    logits = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    experts = _num_experts(module)
    if not torch.is_tensor(logits) or logits.dim() != 2 or (experts and logits.shape[-1] != experts):
        try:
            import transformers
            version = f"transformers {transformers.__version__}"
        except ImportError:
            version = "this transformers version"
        got = (f"a tuple of {len(output)} ({', '.join(_describe(o) for o in output)})"
               if isinstance(output, tuple) else _describe(output))
        name = type(module).__name__
        raise TypeError(f"dynamoe.trace: {name} returned {got}; the recorder expects (hidden_states, router_logits "
                        f"[tokens, {experts}]), as its forward returns in the transformers versions it knows. "
                        f"{version} differs: record it with an adapter, "
                        f"adapters={{{name}: (fn, num_experts)}} with fn(module, output) -> [tokens, k] indices")
    # As these blocks route: top-k of the fp32 softmax (ties resolve as the model's do).
    return logits.softmax(dim=-1, dtype=torch.float).topk(module.top_k, dim=-1).indices


def _describe(x):
    import torch
    return f"a tensor of shape {list(x.shape)}" if torch.is_tensor(x) else type(x).__name__


def _in_backward(torch):
    """True inside a backward pass (a recompute of activation checkpointing):
    torch >= 2.0 numbers the running graph task; on torch 1.x the dynamoe
    library asks the autograd engine."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    if current is not None:
        return current() != -1
    from ._ops import ops
    return bool(ops().in_backward())


def _hf_layer(name, module):
    gate = module.gate
    expert = module.experts[0]
    up = getattr(expert, "w1", None) or getattr(expert, "gate_proj", None)
    return dict(name=name, num_experts=int(module.num_experts), d_model=int(gate.in_features),
                d_hidden=int(up.out_features) if up is not None else 0, gated=1, bias=0,
                bytes_per_element=int(gate.weight.element_size()))


def _num_experts(module):
    for attr in ("num_experts", "num_local_experts", "n_routed_experts"):
        v = getattr(module, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


class Recorder:
    """The hooks and the writer thread of one recording; see record()."""

    def __init__(self, model, path, adapters=None, names=None, training_only=False, max_pending=1024):
        import torch
        self._torch = torch
        adapters = dict(adapters or {})
        self.rank = torch.distributed.get_rank() if (torch.distributed.is_available() and
                                                     torch.distributed.is_initialized()) else None
        if self.rank is not None:
            base = path[:-len(".dmtrace")] if path.endswith(".dmtrace") else path
            path = f"{base}.rank{self.rank}.dmtrace"
        self.path = path
        self.training_only = training_only
        self._layers, self._hooks, self._steps = [], [], []
        self._error = None
        self._reported = False  # the hooks raised the writer's error once
        self._closed = True  # until the file and the writer exist (close() then has nothing to do)
        matched, found = [], []
        names = None if names is None else set(names)
        for name, module in model.named_modules():
            fn, experts = self._adapter_for(name, module, adapters, matched)
            if fn is None or (names is not None and name not in names):
                continue
            if type(module).__name__ in KNOWN_ROUTERS and fn is _hf_indices:
                spec = _hf_layer(name, module)
            else:
                experts = experts or _num_experts(module)
                if not experts:
                    raise ValueError(f"dynamoe.trace: module '{name}': give its expert count as "
                                     f"adapters={{...: (fn, num_experts)}}; it has no num_experts attribute")
                spec = dict(name=name, num_experts=int(experts), d_model=0, d_hidden=0, gated=0, bias=0,
                            bytes_per_element=2)
            found.append((module, len(self._layers), fn))
            self._layers.append(spec)
            self._steps.append(0)
        unused = [k for k in adapters if not any(k is m for m in matched)]
        if unused or not self._layers:
            raise ValueError("dynamoe.trace: " + (f"no module of the model matches the adapters for {unused!r}"
                                                  if unused else "no router found: the model has no " +
                                                  ", ".join(KNOWN_ROUTERS) + " and adapters name no module"))
        self._file = open(path, "wb")
        self._file.write(_header(self.rank or 0, self._layers))
        self._file.flush()
        self._queue = queue.Queue(maxsize=max_pending)  # bounded: a slow disk slows the job, memory stays bounded
        self._thread = threading.Thread(target=self._write_loop, name="dynamoe-trace-writer", daemon=True)
        self._thread.start()
        self._closed = False
        atexit.register(self.close)
        # Hooks last: whatever failed above left the model as it was.
        try:
            for module, index, fn in found:
                self._hooks.append(module.register_forward_hook(self._make_hook(index, fn)))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _adapter_for(name, module, adapters, matched):
        """(fn, num_experts or None) for this module, or (None, None); the key used goes into `matched`."""
        for key, entry in adapters.items():
            if key is module or key is type(module) or (isinstance(key, str) and key == name):
                matched.append(key)
                return entry if isinstance(entry, tuple) else (entry, None)
        if type(module).__name__ in KNOWN_ROUTERS:
            return _hf_indices, None
        return None, None

    def _make_hook(self, index, fn):
        torch = self._torch

        def hook(module, inputs, output):
            if self._closed or (self.training_only and not module.training) or _in_backward(torch):
                return
            if self._error is not None:
                if self._reported:
                    raise RuntimeError("dynamoe.trace: recording stopped after an error (raised by an earlier call)")
                self._reported = True
                raise RuntimeError(f"dynamoe.trace: recording to {self.path} failed: {self._error}") from self._error
            idx = fn(module, output)
            if not torch.is_tensor(idx) or idx.dim() < 1:
                raise ValueError(f"dynamoe.trace: the adapter of '{self._layers[index]['name']}' returned "
                                 f"{type(idx).__name__}; expected a [tokens, k] tensor of expert indices")
            idx = idx.detach()
            if idx.is_cuda:
                # Off the GPU without waiting for it: the writer waits on the event.
                host = torch.empty(idx.shape, dtype=idx.dtype, pin_memory=True)
                host.copy_(idx, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            else:
                host, event = idx.clone(), None
            step = self._steps[index]
            self._steps[index] += 1
            self._queue.put((index, step, host, event))

        return hook

    def _write_loop(self):
        torch = self._torch
        done = False
        while not done:
            batch = [self._queue.get()]
            while len(batch) < 256:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            out = []
            for item in batch:
                if item is None:
                    done = True
                    continue
                if self._error is not None:
                    continue
                index, step, host, event = item
                try:
                    if event is not None:
                        event.synchronize()
                    experts = self._layers[index]["num_experts"]
                    flat = host.reshape(-1).long()
                    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= experts):
                        raise ValueError(f"dynamoe.trace: layer '{self._layers[index]['name']}' step {step}: "
                                         f"expert indices must be in [0, {experts}), got "
                                         f"[{int(flat.min())}, {int(flat.max())}]")
                    counts = torch.bincount(flat, minlength=experts).tolist()
                    out.append(_step_record(step, index, counts))
                except Exception as e:  # reported by the next hook call and by close()
                    self._error = e
            if out:
                try:
                    self._file.write(b"".join(out))
                    self._file.flush()
                except Exception as e:
                    self._error = e

    @property
    def steps(self):
        """Forward calls recorded per layer, in layer order."""
        return list(self._steps)

    @property
    def layer_names(self):
        return [l["name"] for l in self._layers]

    def remove_hooks(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def close(self):
        """Removes the hooks, writes what is pending and closes the file.
        Raises what went wrong in the writer, if anything."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self.remove_hooks()
        self._queue.put(None)
        self._thread.join()
        self._file.close()
        atexit.unregister(self.close)
        if self._error is not None:
            raise self._error

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return
        # The body's exception propagates; the writer's, if any, is only reported.
        try:
            self.close()
        except Exception as e:
            import warnings
            warnings.warn(f"dynamoe.trace: recording to {self.path} also failed: {e!r}", RuntimeWarning)


def record(model, path, *, adapters=None, names=None, training_only=False, max_pending=1024):
    """Records the routing of `model` into the dynamoe trace `path` until close().

    adapters: {module, qualified name or class: fn or (fn, num_experts)} for
      routers this module does not know; fn(module, output) returns the
      [tokens, k] expert indices. num_experts defaults to the module's
      num_experts / num_local_experts attribute.
    names: record only the routers with these qualified names (default: all).
    training_only: record only forward calls in training mode.
    max_pending: calls queued for the writer before a hook waits for it.
    Returns the Recorder (a context manager). Each forward call of a router is
    one step of its layer. The rank is torch.distributed's when initialised.
    """
    return Recorder(model, os.fspath(path), adapters=adapters, names=names, training_only=training_only,
                    max_pending=max_pending)
