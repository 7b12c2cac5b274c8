#!/usr/bin/env bash
# deps -> build -> the main job: 4 CPU ranks (expert parallelism over Gloo)
# train the skewed demo model (64 experts) with placement `adaptive` and the
# `overlap` schedule, expose Prometheus metrics (port 9400 + local rank) and
# write a routing trace; then dynamoe-replay replays that trace against all
# four policies and the force-balanced bound for a 64-GPU H100 cluster, as a
# Mixtral-sized layer (d_model 4096, d_hidden 14336, gated, bf16, 8192 tokens
# per rank: the demo's own layer is too small for placement to matter), prints
# the table and draws the plots (build/demo/replay/*.png).
# Every DYNAMOE_* variable overrides its default here (DYNAMOE_METRICS_PORT=0
# turns metrics off). Ranks: DYNAMOE_DEMO_RANKS or --ranks N. Other arguments
# go to dynamoe-demo: --steps N --log-every N --experts N --top-k N --seed N --batch N.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
./scripts/build.sh >/dev/null
mkdir -p build/demo
export DYNAMOE_PLACEMENT=${DYNAMOE_PLACEMENT:-adaptive}
export DYNAMOE_SCHEDULE=${DYNAMOE_SCHEDULE:-overlap}
export DYNAMOE_METRICS_PORT=${DYNAMOE_METRICS_PORT:-9400}
export DYNAMOE_TRACE=${DYNAMOE_TRACE:-build/demo/trace}
rm -f "$DYNAMOE_TRACE".rank*.dmtrace
./build/default/tools/dynamoe-demo --ranks "${DYNAMOE_DEMO_RANKS:-4}" --experts 64 "$@"
top_k=2  # dynamoe-demo's default; the replay's rescaling needs the routing's top-k
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do [[ ${args[i]} == --top-k ]] && top_k=${args[i + 1]}; done
echo
echo "metrics were served at http://127.0.0.1:${DYNAMOE_METRICS_PORT}/metrics (+ local rank) while it ran;"
echo "trace: ${DYNAMOE_TRACE}.rank*.dmtrace. Replaying it for a 64-GPU H100 cluster (8 per NVLink node, InfiniBand)"
echo "as a Mixtral-sized layer (d_model 4096, d_hidden 14336, gated, bf16) with 8192 tokens per rank:"
./build/default/tools/dynamoe-replay run "${DYNAMOE_TRACE}.rank0.dmtrace" --world 64 --preset h100-nvlink-ib \
  --d-model 4096 --d-hidden 14336 --gated --dtype bf16 --tokens-per-rank 8192 --top-k "$top_k" \
  --out-dir build/demo/replay
PYTHONPATH=python /usr/bin/python3 -m dynamoe.replay plot build/demo/replay
