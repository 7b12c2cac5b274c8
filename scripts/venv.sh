#!/usr/bin/env bash
# The torch 2.x environment: .venv/ in the checkout (git-ignored), with the
# current torch 2.x from the Python package index (the default wheel is the
# CUDA build; it imports and runs on a machine without a GPU). It sees
# Debian's Python packages (pytest, numpy, matplotlib, ...; deps.sh installs
# them), so only torch and what it needs come from the index. A second run
# with that torch present is instant. Prints the venv's python. The version is
# pinned: the tests' rounding bounds were measured on it, and its
# ProcessGroupGloo.hpp is known to compile against Debian's Gloo headers.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
series=2.15
want="torch==$series.*"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$series" >/dev/null 2>&1 <<'PY'
import sys, torch
sys.exit(0 if torch.__version__.startswith(sys.argv[1] + ".") and "/.venv/" in torch.__file__ else 1)
PY
then
  echo "$venv/bin/python"
  exit 0
fi
echo "venv: installing $want into $venv" >&2
/usr/bin/python3 -m venv --system-site-packages "$venv"
for attempt in 1 2; do
  # --ignore-installed: Debian's torch 1.13 is visible through the system site packages.
  if "$venv/bin/python" -m pip install -q --disable-pip-version-check --ignore-installed "$want" >&2; then
    "$venv/bin/python" -c 'import torch; print("venv: torch", torch.__version__)' >&2
    echo "$venv/bin/python"
    exit 0
  fi
  echo "venv: pip install failed (attempt $attempt)" >&2
  sleep 5
done
exit 1
