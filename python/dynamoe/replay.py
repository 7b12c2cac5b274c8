"""Plots of a dynamoe-replay run (no torch needed).

    dynamoe-replay run TRACE --out-dir out/       # summary.csv, steps.csv, expert_load.csv
    python3 -m dynamoe.replay plot out/           # out/step_time.png, imbalance.png, expert_load.png

step_time.png    predicted time of each training step (its layers summed) per policy,
                 and the force-balanced bound ("balanced", dashed) when replayed
imbalance.png    max/mean rows per rank per step (layers averaged): the recorded
                 routing under plain expert parallelism, and under each policy's plan
expert_load.png  tokens per expert per step (layers and ranks summed), a heat map

Long traces are drawn in at most --max-points bins of consecutive steps (bin means).
"""
import argparse
import collections
import csv
import pathlib
import sys

FILES = ("summary.csv", "steps.csv", "expert_load.csv")
BOUND = "balanced"  # dynamoe-replay's force-balanced bound: drawn dashed, in grey


def _style(policy):
    return {"linestyle": "--", "color": "0.4"} if policy == BOUND else {}
PLOTS = ("step_time.png", "imbalance.png", "expert_load.png")


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _bins(n, max_points):
    """Bin edges over n steps: at most max_points bins of near-equal size."""
    k = max(1, min(n, max_points))
    return [round(i * n / k) for i in range(k + 1)]


def _binned(xs, ys, max_points):
    edges = _bins(len(xs), max_points)
    bx, by = [], []
    for a, b in zip(edges, edges[1:]):
        if b > a:
            bx.append(sum(xs[a:b]) / (b - a))
            by.append(sum(ys[a:b]) / (b - a))
    return bx, by


def load(out_dir, trace=None):
    """The replay's rows for one trace (the first in the files by default):
    (trace, policies, per-step seconds and imbalance per policy, loads)."""
    out_dir = pathlib.Path(out_dir)
    missing = [f for f in FILES if not (out_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{out_dir}: missing {', '.join(missing)}; expected the output of "
                                f"'dynamoe-replay run TRACE --out-dir {out_dir}'")
    summary = _read(out_dir / "summary.csv")
    if not summary:
        raise ValueError(f"{out_dir / 'summary.csv'} has no rows: the replay replayed nothing")
    traces = list(dict.fromkeys(r["trace"] for r in summary))
    trace = trace or traces[0]
    if trace not in traces:
        raise ValueError(f"trace {trace!r} is not in {out_dir}; it has {', '.join(traces)}")
    policies = [r["policy"] for r in summary if r["trace"] == trace]
    seconds = {p: collections.defaultdict(float) for p in policies}
    after = {p: collections.defaultdict(list) for p in policies}
    before = collections.defaultdict(list)
    for r in _read(out_dir / "steps.csv"):
        if r["trace"] != trace:
            continue
        p, step = r["policy"], int(r["step"])
        seconds[p][step] += float(r["predicted_seconds"])
        after[p][step].append(float(r["imbalance_after"]))
        if p == policies[0]:
            before[step].append(float(r["imbalance_before"]))
    loads = collections.defaultdict(dict)
    for r in _read(out_dir / "expert_load.csv"):
        if r["trace"] == trace:
            loads[int(r["step"])][int(r["expert"])] = int(r["tokens"])
    mean = lambda v: sum(v) / len(v)
    return {
        "trace": trace,
        "policies": policies,
        "steps": sorted(before),
        "seconds": {p: dict(seconds[p]) for p in policies},
        "imbalance_before": {s: mean(v) for s, v in before.items()},
        "imbalance_after": {p: {s: mean(v) for s, v in after[p].items()} for p in policies},
        "loads": loads,
    }


def plot(out_dir, trace=None, max_points=2000, dest=None):
    """Writes the three plots; returns their paths."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("dynamoe.replay plot needs matplotlib (Debian: apt-get install python3-matplotlib)") from e
    data = load(out_dir, trace)
    dest = pathlib.Path(dest or out_dir)
    dest.mkdir(parents=True, exist_ok=True)
    steps = data["steps"]
    title = f"{pathlib.Path(data['trace']).name}: {len(steps)} steps"
    paths = [dest / p for p in PLOTS]

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for p in data["policies"]:
        x, y = _binned(steps, [data["seconds"][p][s] * 1e3 for s in steps], max_points)
        ax.plot(x, y, label=p + (" (bound)" if p == BOUND else ""), linewidth=1, **_style(p))
    ax.set(xlabel="step", ylabel="predicted step time (ms, MoE layers summed)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4.5))
    x, y = _binned(steps, [data["imbalance_before"][s] for s in steps], max_points)
    ax.plot(x, y, label="recorded (expert load, max/mean)", color="black", linewidth=1)
    for p in data["policies"]:
        x, y = _binned(steps, [data["imbalance_after"][p][s] for s in steps], max_points)
        ax.plot(x, y, label=f"{p} (rows per rank, max/mean)", linewidth=1, **_style(p))
    ax.set(xlabel="step", ylabel="imbalance (max / mean)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)

    load_steps = sorted(data["loads"])
    experts = 1 + max((e for row in data["loads"].values() for e in row), default=0)
    edges = _bins(len(load_steps), max_points)
    grid = [[0.0] * (len(edges) - 1) for _ in range(experts)]
    for j, (a, b) in enumerate(zip(edges, edges[1:])):
        for s in load_steps[a:b]:
            for e, n in data["loads"][s].items():
                grid[e][j] += n / (b - a)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    first, last = (load_steps[0], load_steps[-1]) if load_steps else (0, 0)
    im = ax.imshow(grid, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis",
                   extent=(first - 0.5, last + 0.5, -0.5, experts - 0.5))
    fig.colorbar(im, ax=ax, label="tokens per step")
    ax.set(xlabel="step", ylabel="expert", title=f"{title}: expert load")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m dynamoe.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plot", help="draw the plots of a 'dynamoe-replay run --out-dir DIR'")
    p.add_argument("dir", help="the --out-dir of dynamoe-replay run")
    p.add_argument("--trace", help="which trace (as named in summary.csv); the first by default")
    p.add_argument("--out", help="where to write the PNGs (default: DIR)")
    p.add_argument("--max-points", type=int, default=2000, help="most points per line (default 2000)")
    args = parser.parse_args(argv)
    if args.max_points < 1:
        parser.error(f"--max-points expects a positive integer, got {args.max_points}")
    try:
        paths = plot(args.dir, args.trace, args.max_points, args.out)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"dynamoe.replay: {e}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
