#!/usr/bin/env bash
# The GPU machine's one check (an H200, torch 2.x+cu13 in /opt/torch/.venv, no
# package registry; carry .debs from scripts/gpu_debs.sh). It
#   1. builds the ops library, the CUDA kernel tests and the CUDA kernel bench
#      against the machine's torch (scripts/gpu_build.sh, sm_90),
#   2. runs the CUDA kernels against their CPU twins (C++),
#   3. runs the CUDA layer against the CPU layer (Python),
#   4. runs 2- to 4-process torchrun jobs on the one GPU over a Gloo group with
#      CUDA tensors (plain expert parallelism against one process; copies of a
#      hot expert and the overlap pipeline against the sequential exchange),
#   5. runs the kernel and layer benches (they print their own ratios),
# and ends with "N passed, N failed". Logs go to $OUT when set.
# Usage: scripts/gpu_check.sh [python]
set -uo pipefail
cd "$(dirname "$0")/.."
py=${1:-${PYTHON:-/opt/torch/.venv/bin/python}}
out=${OUT:-build/gpu-check}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 DYNAMOE_LOG_LEVEL=warning
passed=0 failed=0
step() {
  local name=$1; shift
  local t0=$SECONDS
  echo "=== gpu_check: $name"
  if "$@"; then passed=$((passed + 1)); echo "=== gpu_check: $name passed ($((SECONDS - t0)) s)"
  else failed=$((failed + 1)); echo "=== gpu_check: $name FAILED ($((SECONDS - t0)) s)"; fi
}
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv,noheader || true
ls .debs/*.deb >/dev/null 2>&1 || { echo "gpu_check: no .debs/*.deb (run scripts/gpu_debs.sh and carry .debs)"; exit 1; }

build() {
  PYTHON=$py scripts/gpu_build.sh build/gpu -k 0 -j"$(nproc)" dynamoe_ops dynamoe_cuda_kernel_tests bench_cuda_kernels dynamoe-replay \
    >"$out/build.log" 2>&1 || { tail -60 "$out/build.log"; return 1; }
  grep -E "dynamoe: (torch|CUDA|metrics)" build/gpu.configure.log
}
step "build (sm_90, $(nproc) jobs)" build
export LD_LIBRARY_PATH=/tmp/dynamoe-debs/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export DYNAMOE_OPS_LIBRARY=$PWD/build/gpu/bindings/libdynamoe_ops.so PYTHONPATH=$PWD/python \
  TEST_REPLAY_TOOL=$PWD/build/gpu/tools/dynamoe-replay

step "CUDA kernels against their CPU twins" build/gpu/tests/dynamoe_cuda_kernel_tests
step "CUDA layer against the CPU layer" "$py" -m pytest -q -rs -p no:cacheprovider tests/python/test_cuda_layer.py \
  "tests/python/test_trace_record.py::test_indices_of_cuda_routers_are_counted"
step "torchrun 2-4 ranks on the one GPU over Gloo: plain EP, copies, overlap" "$py" -m pytest -q -rs -p no:cacheprovider \
  tests/python/test_distributed.py -k cuda_tensors_over_a_gloo_group
step "bench_cuda_kernels" bash -c "set -o pipefail; build/gpu/bench/bench_cuda_kernels 2>&1 | tee $out/bench_cuda_kernels.txt"
step "bench_cuda_layer" bash -c "set -o pipefail; $py bench/bench_cuda_layer.py 2>&1 | tee $out/bench_cuda_layer.txt"
echo "gpu_check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
