#!/usr/bin/env bash
# Installs the Debian packages dynamoe needs, skipping those already present
# (a second run is instant), then the Python packages of the Hugging Face
# recording test into build/pydeps (git-ignored; skipped when the pinned set
# is already there).
set -euo pipefail
cd "$(dirname "$0")/.."
# torch itself (2.x, LibTorch included) comes from the package index into
# .venv (scripts/venv.sh). libgloo-dev: the Gloo headers that torch's
# ProcessGroupGloo.hpp includes and pip wheels lack (C++ jobs' own groups).
PACKAGES=(build-essential cmake ninja-build libgloo-dev libabsl-dev
  libboost-dev libboost-system-dev nlohmann-json3-dev libbenchmark-dev libgtest-dev libgmock-dev
  prometheus-cpp-dev prometheus python3-pytest python3-matplotlib python3-pip python3-venv python3-numpy
  python3-yaml python3-requests python3-packaging)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PACKAGES[@]} packages present"
else
  echo "deps: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: not root; install these packages as root first: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# transformers 4.46 (the recording test's; it runs on torch 2.x too); its
# other needs come from the Debian packages above. --no-deps keeps pip from
# replacing those; the test adds build/pydeps to sys.path.
# scikit-build-core (with the pathspec and packaging it needs; Debian's
# packaging is too old) is the build backend of the pip install test.
PYDEPS=(transformers==4.46.3 huggingface_hub==0.26.5 tokenizers==0.20.3 safetensors==0.4.5 tqdm==4.67.1
  regex==2024.11.6 filelock==3.16.1 fsspec==2024.10.0
  scikit-build-core==1.1.2 pathspec==1.1.1 packaging==24.2)
stamp=build/pydeps/.dynamoe-pydeps
if [ "$(cat "$stamp" 2>/dev/null)" = "${PYDEPS[*]}" ]; then
  echo "deps: Python packages present (build/pydeps)"
  exit 0
fi
echo "deps: pip installing ${PYDEPS[*]} into build/pydeps"
rm -rf build/pydeps
for attempt in 1 2; do
  if /usr/bin/python3 -m pip install -q --disable-pip-version-check --no-deps --target build/pydeps "${PYDEPS[@]}"; then
    echo "${PYDEPS[*]}" >"$stamp"
    exit 0
  fi
  echo "deps: pip install failed (attempt $attempt)" >&2
  sleep 5
done
exit 1
