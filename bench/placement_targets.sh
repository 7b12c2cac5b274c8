#!/usr/bin/env bash
# The placement targets of issue 23, measured by the replay on synthetic traces
# (bench/make_traces.py): Zipf s=1.0 and 1.2 with a drifting hot set (256
# experts, top-8) at 64 and 256 ranks, and an OLMoE-like trace (64 experts,
# top-8, drifting domain) at 64 ranks; each replayed on h100-nvlink-ib as a
# Mixtral-sized layer (d_model 4096, d_hidden 14336, gated, bf16) with 8192
# tokens per rank, under every policy and the force-balanced bound. Prints one
# Markdown table (bench/README.md, "Placement targets") and the targets per trace.
#
#   bench/placement_targets.sh [OUT_DIR (build/targets)] [--steps N (200)]
#   REPLAY_FLAGS="--max-copied 64" bench/placement_targets.sh   (extra flags for every replay)
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/targets
steps=200
while (($#)); do
  case $1 in
    --steps) steps=$2; shift 2 ;;
    *) out=$1; shift ;;
  esac
done
tool=./build/default/tools/dynamoe-replay
[[ -x $tool ]] || { echo "placement_targets: build $tool first (./scripts/build.sh)" >&2; exit 1; }
/usr/bin/python3 bench/make_traces.py "$out" --steps "$steps" >&2
layer=(--preset h100-nvlink-ib --d-model 4096 --d-hidden 14336 --gated --dtype bf16 --tokens-per-rank 8192 --top-k 8)
read -r -a extra <<<"${REPLAY_FLAGS:-}"
runs=("zipf1.0 64" "zipf1.0 256" "zipf1.2 64" "zipf1.2 256" "olmoe-like 64")
for r in "${runs[@]}"; do
  read -r name world <<<"$r"
  start=$(date +%s.%N)
  "$tool" run "$out/$name.dmtrace" --world "$world" "${layer[@]}" "${extra[@]}" --out-dir "$out/$name-$world" >"$out/$name-$world.txt"
  printf '%s at %s ranks replayed in %.1f s\n' "$name" "$world" "$(echo "$(date +%s.%N) - $start" | bc)" >&2
done
/usr/bin/python3 - "$out" "${runs[@]}" <<'EOF'
import csv, math, sys
out, runs = sys.argv[1], [r.split() for r in sys.argv[2:]]
print("| trace | ranks | policy | speed-up vs none | busiest / mean rows | share of the bound's gain | copies / step | copies' weights ms / step |")
print("|---|---|---|---|---|---|---|---|")
verdicts = []
for name, world in runs:
    rows = {r["policy"]: r for r in csv.DictReader(open(f"{out}/{name}-{world}/summary.csv"))}
    ms = lambda p, k="mean_seconds": 1e3 * float(rows[p][k])
    for p in ("none", "fastermoe", "adaptive", "eplb", "balanced"):
        r = rows[p]
        share = float(r["bound_fraction"])
        print(f"| {name} | {world} | {p} | {float(r['speedup_vs_none']):.3f}x | {float(r['imbalance_after']):.2f} | "
              f"{'n/a' if math.isnan(share) else f'{100 * share:.1f}%'} | {float(r['copies_per_step']):.2f} | "
              f"{ms(p, 'weight_seconds'):.2f} |")
    a = rows["adaptive"]
    gain, copies = ms("none") - ms("balanced"), ms("adaptive", "weight_seconds")
    share_ok = float(a["bound_fraction"]) >= 0.9
    applies = gain > copies
    busiest_ok = float(a["imbalance_after"]) <= 1.10
    beats = [p for p in ("eplb", "fastermoe") if float(a["mean_seconds"]) > float(rows[p]["mean_seconds"])]
    verdicts.append(
        f"- {name} at {world} ranks: adaptive reaches {100 * float(a['bound_fraction']):.1f}% of the bound's gain "
        f"(>= 90%: {'met' if share_ok else 'not met'}); busiest / mean {float(a['imbalance_after']):.2f} "
        + (f"(the bound's gain {gain:.1f} ms > adaptive's copies {copies:.1f} ms, so <= 1.10 applies: "
           f"{'met' if busiest_ok else 'not met'})" if applies else
           f"(the bound's gain {gain:.1f} ms <= adaptive's copies {copies:.1f} ms: <= 1.10 does not apply)")
        + f"; never below eplb or fastermoe: {'met' if not beats else 'not met (below ' + ', '.join(beats) + ')'}")
print()
print("\n".join(verdicts))
EOF
