#!/usr/bin/env bash
# Build against pip torch 2.x with CUDA (the lent H100 machine): abseil comes
# from Debian .debs in .debs/ (scripts/gpu_debs.sh fetches them), NCCL from the
# wheel torch ships. Usage: scripts/gpu_build.sh [build dir] [ninja args...]
set -uo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/gpu}; shift || true
prefix=/tmp/dynamoe-debs; mkdir -p "$(dirname "$dir")"
mkdir -p "$prefix" && for f in .debs/*.deb; do dpkg -x "$f" "$prefix"; done
export LD_LIBRARY_PATH=$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
py=${PYTHON:-python3}
torch_prefix=$($py -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
nccl_root=$($py -c 'import os, nvidia.nccl as n; print(os.path.dirname(n.__file__) if n.__file__ else list(n.__path__)[0])' 2>/dev/null)
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr" -DDYNAMOE_NCCL_ROOT="$nccl_root" -DDYNAMOE_ALLOW_NO_GLOO=ON \
  -DPython3_EXECUTABLE="$(command -v $py)" >"$dir.configure.log" 2>&1 || { tail -40 "$dir.configure.log"; exit 1; }
ninja -C "$dir" "$@"
