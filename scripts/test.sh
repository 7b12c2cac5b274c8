#!/usr/bin/env bash
# deps -> torch 2.x in .venv -> configure -> build -> every C++ (ctest) and
# Python (pytest) test, then one summary line: "summary: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
./scripts/deps.sh || exit 1
py=$(./scripts/venv.sh) || { echo "summary: 0 passed, 1 failed (torch 2.x into .venv)"; exit 1; }
export TORCH_PYTHON=$py
"$py" -c 'import torch; print("test: torch", torch.__version__, "from", torch.__file__)'
./scripts/build.sh || { echo "summary: 0 passed, 1 failed (build)"; exit 1; }
echo "test: deps, venv and build took $(( $(date +%s) - start )) s"

log_dir=build/default/test-logs
mkdir -p "$log_dir"
ctest --test-dir build/default --output-on-failure -j "$(nproc)" 2>&1 | tee "$log_dir/ctest.log"
ctest_rc=${PIPESTATUS[0]}
DYNAMOE_LOG_LEVEL=warning "$py" -m pytest -q -rs tests/python 2>&1 | tee "$log_dir/pytest.log"
pytest_rc=${PIPESTATUS[0]}

# ctest: "100% tests passed, 0 tests failed out of 57"; pytest: "121 passed, 1 failed in 3s".
c_total=$(grep -oE 'tests failed out of [0-9]+' "$log_dir/ctest.log" | grep -oE '[0-9]+$' || echo 0)
c_failed=$(grep -oE '[0-9]+ tests failed out of' "$log_dir/ctest.log" | grep -oE '^[0-9]+' || echo 0)
# Skipped tests (e.g. CUDA kernels without a GPU) are listed once under "did not run".
c_skipped=$(grep -cE '^[[:space:]]+[0-9]+ - .*\(Skipped\)$' "$log_dir/ctest.log" || true)
p_line=$(tail -n 1 "$log_dir/pytest.log")
p_passed=$(grep -oE '[0-9]+ passed' <<<"$p_line" | grep -oE '[0-9]+' || echo 0)
p_failed=$(( $(grep -oE '[0-9]+ failed' <<<"$p_line" | grep -oE '[0-9]+' || echo 0) + $(grep -oE '[0-9]+ error' <<<"$p_line" | grep -oE '[0-9]+' || echo 0) ))
p_skipped=$(grep -oE '[0-9]+ skipped' <<<"$p_line" | grep -oE '[0-9]+' || echo 0)
passed=$(( c_total - c_failed - c_skipped + p_passed ))
skipped=$(( c_skipped + p_skipped ))
failed=$(( c_failed + p_failed ))
if [ "$ctest_rc" -ne 0 ] && [ "$c_failed" -eq 0 ]; then failed=$(( failed + 1 )); fi
if [ "$pytest_rc" -ne 0 ] && [ "$p_failed" -eq 0 ]; then failed=$(( failed + 1 )); fi
echo "C++: $(( c_total - c_failed - c_skipped )) passed, $c_failed failed, $c_skipped skipped; Python: $p_passed passed, $p_failed failed, $p_skipped skipped"
echo "test: everything took $(( $(date +%s) - start )) s"
echo "summary: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
