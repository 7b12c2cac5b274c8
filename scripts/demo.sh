#!/usr/bin/env bash
# deps -> build -> the main job: train the skewed demo model on 4 CPU ranks
# (expert parallelism over Gloo) and show the loss and the imbalance of the
# all-gathered count matrix. Ranks: DYNAMOE_DEMO_RANKS or --ranks N (1 runs
# in one process). Other arguments go to dynamoe-demo: --steps N
# --log-every N --experts N --top-k N --seed N --batch N.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
./scripts/build.sh >/dev/null
exec ./build/default/tools/dynamoe-demo --ranks "${DYNAMOE_DEMO_RANKS:-4}" "$@"
