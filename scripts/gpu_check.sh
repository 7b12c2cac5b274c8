#!/usr/bin/env bash
# The GPU machine's one check (an H200, torch 2.x+cu13 in /opt/torch/.venv, no
# package registry): carry .debs (scripts/gpu_debs.sh: abseil) and build/pydeps
# (scripts/deps.sh: scikit-build-core). It
#   1. pip installs dynamoe into a venv on the machine's torch (pip install .),
#   2. runs the CUDA layer tests (against the CPU layer),
#   3. runs 2- and 4-process torchrun jobs on the one GPU over a Gloo group with
#      CUDA tensors, outputs and gradients equal to one process,
#   4. runs the CUDA layer bench,
# and ends with "N passed, N failed". Usage: scripts/gpu_check.sh [python]
set -uo pipefail
cd "$(dirname "$0")/.."
py=${1:-${PYTHON:-/opt/torch/.venv/bin/python}}
passed=0 failed=0
step() {
  local name=$1; shift
  echo "=== gpu_check: $name"
  if "$@"; then passed=$((passed + 1)); echo "=== gpu_check: $name passed"
  else failed=$((failed + 1)); echo "=== gpu_check: $name FAILED"; fi
}
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'

# 1. pip install . (abseil from the carried .debs; the build backend from build/pydeps).
prefix=/tmp/dynamoe-debs
ls .debs/*.deb >/dev/null 2>&1 || { echo "gpu_check: no .debs/*.deb (run scripts/gpu_debs.sh and carry .debs)"; exit 1; }
mkdir -p "$prefix" && for f in .debs/*.deb; do dpkg -x "$f" "$prefix"; done
export LD_LIBRARY_PATH=$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
venv=/tmp/dynamoe-gpu-venv
"$py" -m venv --without-pip "$venv"
# A venv made from a venv sees the base interpreter's packages, not that venv's
# (torch, pip, pytest): a .pth adds them.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$site/parent.pth"
install() {
  PYTHONPATH=$PWD/build/pydeps "$venv/bin/python" -m pip install -v --no-build-isolation --no-deps --no-index \
    --config-settings=build-dir=build/pip-gpu \
    --config-settings=cmake.define.CMAKE_PREFIX_PATH="$prefix/usr" \
    --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=90 . >build/pip-gpu.log 2>&1 ||
    { tail -40 build/pip-gpu.log; return 1; }
  grep -E "dynamoe: (torch|CUDA|metrics)" build/pip-gpu.log
  (cd /tmp && "$venv/bin/python" -c 'import dynamoe, torch; print("installed ops:", dynamoe.load_library())')
}
mkdir -p build
step "pip install ." install
lib=$("$venv/bin/python" -c 'import dynamoe; print(dynamoe.load_library())' 2>/dev/null)
export DYNAMOE_OPS_LIBRARY=$lib

# 2. The CUDA layer against the CPU layer.
step "CUDA layer tests" "$venv/bin/python" -m pytest -q -rs tests/python/test_cuda_layer.py
# 3. Several processes on the one GPU over Gloo, against one process.
step "torchrun 2 and 4 ranks, CUDA tensors over Gloo" "$venv/bin/python" -m pytest -q -rs \
  tests/python/test_distributed.py -k cuda_tensors_over_a_gloo_group
# 4. The bench (prints its own ratios).
step "bench_cuda_layer" "$venv/bin/python" bench/bench_cuda_layer.py
echo "gpu_check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
