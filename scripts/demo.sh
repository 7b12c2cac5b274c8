#!/usr/bin/env bash
# deps -> build -> the main job: train the skewed demo model and show the
# loss and per-expert load. Extra arguments go to dynamoe-demo (--help-free:
# --steps N --log-every N --experts N --top-k N --seed N --batch N).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
./scripts/build.sh >/dev/null
exec ./build/default/tools/dynamoe-demo "$@"
