"""Overhead of dynamoe.trace.record on a forward pass: a tiny randomly
initialised Hugging Face Mixtral (no weights downloaded), run with and
without the recording hook, interleaved pair by pair in one run.

    python3 bench/bench_trace_record.py [--pairs 200] [--batch 8] [--seq 128] [--device cpu|cuda]

Two copies of one model (same weights): one carries the hooks, one does not;
each pair runs both on the same input, alternating which goes first. Printed:
each side's median forward time and the median of the per-pair ratios
(hooked / plain), with its quartiles. Load drift between pairs cancels in
the ratio; on a shared machine the absolute times mean little.
"""
import argparse
import copy
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
if (ROOT / "build" / "pydeps").is_dir():  # scripts/deps.sh installs transformers there
    sys.path.append(str(ROOT / "build" / "pydeps"))

import torch  # noqa: E402
import transformers  # noqa: E402

import dynamoe  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(vocab_size=256, hidden_size=a.hidden, intermediate_size=2 * a.hidden,
                                     num_hidden_layers=a.layers, num_attention_heads=4, num_key_value_heads=2,
                                     num_local_experts=a.experts, num_experts_per_tok=2,
                                     max_position_embeddings=max(64, a.seq))
    plain = transformers.MixtralForCausalLM(cfg).eval().to(a.device)
    hooked = copy.deepcopy(plain)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    times = {"plain": [], "hooked": []}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        rec = dynamoe.trace.record(hooked, os.path.join(tmp, "bench.dmtrace"))
        for i in range(a.warmup + a.pairs):
            x = torch.randint(0, 256, (a.batch, a.seq), device=a.device)
            order = ("plain", "hooked") if i % 2 == 0 else ("hooked", "plain")
            for name in order:
                model = plain if name == "plain" else hooked
                sync()
                t0 = time.perf_counter()
                model(x)
                sync()
                if i >= a.warmup:
                    times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rec.close()  # drains the writer: not part of any forward
        close_s = time.perf_counter() - t0
        size = os.path.getsize(os.path.join(tmp, "bench.dmtrace"))
    assert rec.steps == [a.warmup + a.pairs] * a.layers, rec.steps
    ratios = sorted(h / p for h, p in zip(times["hooked"], times["plain"]))
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, device {a.device}"
          + (f" ({torch.cuda.get_device_name()})" if a.device.startswith("cuda") else "")
          + f", torch {torch.__version__}, transformers {transformers.__version__}, "
            f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"model: Mixtral, {a.layers} layers, hidden {a.hidden}, {a.experts} experts, top-2; "
          f"{a.batch}x{a.seq} = {a.batch * a.seq} tokens per forward; {a.pairs} pairs after {a.warmup} warm-up")
    print(f"plain  forward: median {1e3 * statistics.median(times['plain']):.3f} ms")
    print(f"hooked forward: median {1e3 * statistics.median(times['hooked']):.3f} ms")
    print(f"hooked / plain, per pair: median {med:.4f} (quartiles {q1:.4f}, {q3:.4f})")
    print(f"close (writer drain): {1e3 * close_s:.1f} ms; trace {size} bytes for "
          f"{sum(rec.steps)} layer-steps")


if __name__ == "__main__":
    main()
