#!/usr/bin/env bash
# Downloads the Debian packages the GPU machine lacks (it has no registry):
# abseil, googletest (the CUDA kernel tests) and Boost's headers (Boost.Asio,
# runtime/) into .debs/ (git-ignored); scripts/gpu_build.sh unpacks them into /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .debs && cd .debs
apt-get download libabsl-dev libabsl20220623 libgtest-dev libboost1.81-dev
