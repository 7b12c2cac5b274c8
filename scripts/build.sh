#!/usr/bin/env bash
# Configures and builds a preset (default: the CPU preset) against the torch
# of .venv (scripts/venv.sh; or $TORCH_PYTHON): LibTorch from that wheel.
# A build folder configured against another torch is configured afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${DYNAMOE_PRESET:-default}"
py="${TORCH_PYTHON:-$(./scripts/venv.sh)}"
torch_dir=$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))') ||
  { echo "build: $py cannot import torch (scripts/venv.sh installs it)" >&2; exit 1; }
dir=build/$preset
if [ -f "$dir/CMakeCache.txt" ] && ! grep -qF "Torch_DIR:PATH=$torch_dir/share/cmake/Torch" "$dir/CMakeCache.txt"; then
  echo "build: $dir was configured against another torch; configuring it afresh" >&2
  # the ops library too: python/dynamoe/_ops.py must not load one built for the other torch
  rm -rf "$dir/CMakeCache.txt" "$dir/CMakeFiles" "$dir/bindings/libdynamoe_ops.so"
fi
# The torch root first: its lib/ must win over a system LibTorch (Debian's).
cmake --preset "$preset" -DCMAKE_PREFIX_PATH="$torch_dir;$torch_dir/share/cmake" >/dev/null
cmake --build --preset "$preset" -j "${DYNAMOE_JOBS:-$(nproc)}"
