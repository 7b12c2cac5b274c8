#!/usr/bin/env bash
# Configures and builds a preset (default: the CPU preset).
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${DYNAMOE_PRESET:-default}"
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j "${DYNAMOE_JOBS:-$(nproc)}"
