"""Issue 7 benchmark on one GPU: the dynamoe layer (CUDA path) against a naive
per-expert loop (MixtralKit style), a torch._grouped_mm layer and a dense
GEMM chain of the same FLOPs, bf16, forward + backward, side by side in one run.

  DYNAMOE_OPS_LIBRARY=build/gpu/bindings/libdynamoe_ops.so python3 bench/bench_cuda_layer.py

Prints per shape: median step time, expert-FLOP efficiency (useful FLOPs / time
/ dense rate), peak memory over the resting state vs the ideal (permuted tokens
plus the two SwiGLU pre-activations), and the dynamoe kernel-time breakdown.
"""
import argparse
import os
import pathlib
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "python"))
import dynamoe  # noqa: E402

SHAPES = {
    "mixtral": dict(tokens=16384, d=2048, h=8192, e=8, k=2),
    "olmoe": dict(tokens=16384, d=2048, h=1024, e=64, k=8),
}
DT = torch.bfloat16


def median_ms(step, iters, warmup):
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), min(times), max(times)


def peak_bytes(step):
    step()  # gradients exist from here on: they are resting memory, not activations
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


class Params:
    """One set of SwiGLU expert weights shared by every variant."""

    def __init__(self, s, gen_seed=0):
        torch.manual_seed(gen_seed)
        d, h, e = s["d"], s["h"], s["e"]
        mk = lambda *shape, fan: (torch.randn(*shape, device="cuda") / fan ** 0.5).to(DT).requires_grad_(True)
        self.gate = mk(e, d, fan=d)
        self.w1, self.w3, self.w2 = mk(e, d, h, fan=d), mk(e, d, h, fan=d), mk(e, h, d, fan=h)


def route(x, gate, k):
    probs = torch.softmax(F.linear(x, gate).float(), -1)
    w, sel = torch.topk(probs, k, dim=-1)
    return (w / w.sum(-1, keepdim=True)).to(x.dtype), sel


def naive_loop(p, x, k):
    w, sel = route(x, p.gate, k)
    out = torch.zeros_like(x)
    for e in range(p.w1.shape[0]):
        tok, slot = torch.where(sel == e)
        if tok.numel() == 0:
            continue
        xe = x[tok]
        ye = (F.silu(xe @ p.w1[e]) * (xe @ p.w3[e])) @ p.w2[e]
        out = out.index_add(0, tok, ye * w[tok, slot, None])
    return out


def grouped_mm_layer(p, x, k, w1t, w3t, w2t):
    w, sel = route(x, p.gate, k)
    flat = sel.flatten()
    order = torch.argsort(flat, stable=True)
    tok = order // k
    offs = torch.cumsum(torch.bincount(flat, minlength=p.w1.shape[0]), 0).to(torch.int32)
    xs = x[tok]
    a = F.silu(torch._grouped_mm(xs, w1t(), offs=offs)) * torch._grouped_mm(xs, w3t(), offs=offs)
    ys = torch._grouped_mm(a, w2t(), offs=offs) * w.flatten()[order, None]
    return torch.zeros_like(x).index_add(0, tok, ys)


def idle_report(prof):
    """Where the GPU waits inside one step: kernel-time union vs span, the
    largest gaps (with the kernels around them) and the host's sync calls."""
    from torch.autograd import DeviceType
    ks = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                if e.device_type == DeviceType.CUDA)
    if not ks:
        return
    busy, gaps = 0.0, []
    cur_s, cur_e, last = ks[0][0], ks[0][1], ks[0][2]
    for st, en, name in ks[1:]:
        if st > cur_e:
            gaps.append((st - cur_e, last[:60], name[:60]))
            busy += cur_e - cur_s
            cur_s, cur_e = st, en
        else:
            cur_e = max(cur_e, en)
        last = name
    busy += cur_e - cur_s
    span = ks[-1][1] - ks[0][0]
    print(f"    GPU busy {busy / 1e3:.2f} ms of a {span / 1e3:.2f} ms span; largest gaps:")
    for g, a, b in sorted(gaps, reverse=True)[:5]:
        print(f"      {g / 1e3:7.3f} ms after {a} before {b}")
    syncs = {}
    for e in prof.events():
        if e.device_type == DeviceType.CPU and any(k in e.name for k in ("Synchronize", "_local_scalar_dense",
                                                                         "cudaMemcpy")):
            syncs[e.name] = syncs.get(e.name, 0) + 1
    print(f"    host sync-like calls: {syncs}")


def breakdown(step):
    """Device time per kernel class over one step (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    idle_report(prof)
    from torch.autograd import DeviceType
    per_kernel = {}
    for ev in prof.events():
        if ev.device_type == DeviceType.CUDA:
            per_kernel[ev.name] = per_kernel.get(ev.name, 0.0) + ev.time_range.end - ev.time_range.start
    for name, t in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:10]:
        print(f"    {t / 1e3:8.3f} ms  {name[:100]}")
    cls = {"GEMMs (experts and gate)": 0.0, "dynamoe fused activation": 0.0,
           "dynamoe router/permute/combine": 0.0, "other (ATen elementwise, copies, memsets)": 0.0}
    for name, t in per_kernel.items():
        if any(g in name.lower() for g in ("gemm", "nvjet", "xmma", "cutlass", "sm90_")):
            cls["GEMMs (experts and gate)"] += t
        elif "dynamoe" in name and ("ForwardKernel" in name or "BackwardKernel" in name):
            cls["dynamoe fused activation"] += t
        elif "dynamoe" in name:
            cls["dynamoe router/permute/combine"] += t
        else:
            cls["other (ATen elementwise, copies, memsets)"] += t
    total = sum(cls.values())
    return {n: (v / 1e3, v / total if total else 0.0) for n, v in cls.items()}


def run_shape(name, s, iters, warmup):
    T, d, h, E, k = s["tokens"], s["d"], s["h"], s["e"], s["k"]
    rows = T * k
    flops = 3 * 3 * 2 * rows * d * h  # 3 GEMMs, forward + 2x backward
    print(f"\n== {name}: tokens {T}, d_model {d}, d_hidden {h}, experts {E}, top-{k}, bf16, fwd+bwd ==")
    torch.manual_seed(1)
    x = torch.randn(T, d, device="cuda", dtype=DT).requires_grad_(True)
    gy = torch.randn(T, d, device="cuda", dtype=DT)
    results = {}

    def record(label, step, params=()):
        # Timed as a training loop runs: gradients set to None before each step
        # (zero_grad's default), so none is summed into an old one.
        def fresh_step():
            for q in list(params) + [x]:
                q.grad = None
            step()
        ms, lo, hi = median_ms(fresh_step, iters, warmup)
        mem = peak_bytes(step)  # gradients kept: the peak counts activations only
        results[label] = (ms, lo, hi, mem)

    # Dense GEMM chain of the same FLOPs: the practical limit.
    xd = torch.randn(rows, d, device="cuda", dtype=DT).requires_grad_(True)
    gd = torch.randn(rows, d, device="cuda", dtype=DT)
    W1 = (torch.randn(d, h, device="cuda") / d ** 0.5).to(DT).requires_grad_(True)
    W3 = (torch.randn(d, h, device="cuda") / d ** 0.5).to(DT).requires_grad_(True)
    W2 = (torch.randn(h, d, device="cuda") / h ** 0.5).to(DT).requires_grad_(True)
    gh = torch.randn(rows, h, device="cuda", dtype=DT)

    def dense_gemms():  # the 9 GEMMs of a SwiGLU MLP (3 forward, 6 backward) and nothing else
        ((xd @ W1) @ W2).backward(gd)
        (xd @ W3).backward(gh)

    record("dense GEMMs (same FLOPs)", dense_gemms, (xd, W1, W2, W3))
    record("dense SwiGLU MLP (same FLOPs)", lambda: ((F.silu(xd @ W1) * (xd @ W3)) @ W2).backward(gd),
           (xd, W1, W2, W3))
    del xd, gd, gh, W1, W2, W3

    layer = dynamoe.MoE(d, h, E, top_k=k, gated=True, activation="silu", capacity_factor=0.0,
                        name="bench").cuda().to(DT)
    for algo in ("loop", "grouped"):
        os.environ["DYNAMOE_GROUPED_GEMM"] = algo
        record(f"dynamoe ({algo} cuBLAS)", lambda: layer(x).backward(gy), list(layer.parameters()))
    best = min(("loop", "grouped"), key=lambda a: results[f"dynamoe ({a} cuBLAS)"][0])
    os.environ["DYNAMOE_GROUPED_GEMM"] = best
    def dyn_fresh_step():
        for q in list(layer.parameters()) + [x]:
            q.grad = None
        layer(x).backward(gy)

    share = breakdown(dyn_fresh_step)
    del layer
    torch.cuda.empty_cache()

    p = Params(s)
    pp = (p.gate, p.w1, p.w2, p.w3)
    record("naive per-expert loop", lambda: naive_loop(p, x, k).backward(gy), pp)
    layouts = {"b [E,K,N] row-major": (lambda: p.w1, lambda: p.w3, lambda: p.w2),
               "b column-major": None}
    try:
        w1c = p.w1.detach().transpose(1, 2).contiguous().requires_grad_(True)
        w3c = p.w3.detach().transpose(1, 2).contiguous().requires_grad_(True)
        w2c = p.w2.detach().transpose(1, 2).contiguous().requires_grad_(True)
        layouts["b column-major"] = (lambda: w1c.transpose(1, 2), lambda: w3c.transpose(1, 2),
                                     lambda: w2c.transpose(1, 2))
    except RuntimeError as e:
        print("column-major weights:", e)
    gm_done = False
    for lname, lay in layouts.items():
        if lay is None or gm_done:
            continue
        try:
            record(f"torch._grouped_mm ({lname})", lambda: grouped_mm_layer(p, x, k, *lay).backward(gy), pp)
            gm_done = True
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            print(f"torch._grouped_mm with {lname}: {type(e).__name__}: {str(e)[:200]}")

    ideal = (rows * d + 2 * rows * h) * 2
    dense_ms = results["dense GEMMs (same FLOPs)"][0]
    print(f"useful expert FLOPs {flops / 1e12:.2f} TFLOP; dense rate {flops / dense_ms / 1e9:.0f} TFLOP/s; "
          f"ideal activation memory {ideal / 2**20:.0f} MiB")
    print(f"{'variant':38s} {'median ms':>10s} {'min':>8s} {'max':>8s} {'TFLOP/s':>8s} {'eff vs dense':>12s} "
          f"{'peak MiB':>9s} {'peak/ideal':>10s}")
    for label, (ms, lo, hi, mem) in results.items():
        print(f"{label:38s} {ms:10.2f} {lo:8.2f} {hi:8.2f} {flops / ms / 1e9:8.0f} {dense_ms / ms:12.3f} "
              f"{mem / 2**20:9.0f} {mem / ideal:10.2f}")
    print(f"dynamoe ({best}) device time by kernel class over one step:")
    for n, (ms, frac) in share.items():
        print(f"  {n:44s} {ms:8.2f} ms {100 * frac:6.1f} %")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="mixtral,olmoe")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_cuda_layer: no CUDA device; nothing measured")
        return
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, ops {dynamoe.load_library()}")
    for name in a.shapes.split(","):
        run_shape(name, SHAPES[name], a.iters, a.warmup)


if __name__ == "__main__":
    main()
