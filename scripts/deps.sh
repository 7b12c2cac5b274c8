#!/usr/bin/env bash
# Installs the Debian packages dynamoe needs, skipping those already present
# (a second run is instant).
set -euo pipefail
PACKAGES=(build-essential cmake ninja-build libtorch-dev python3-torch libgloo-dev libabsl-dev
  libboost-dev libboost-system-dev nlohmann-json3-dev libbenchmark-dev libgtest-dev libgmock-dev
  prometheus-cpp-dev prometheus python3-pytest python3-matplotlib
  libopenblas0-pthread)  # takes over libblas.so.3 from the reference BLAS torch links against
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
echo "deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: not root; install these packages as root first: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
