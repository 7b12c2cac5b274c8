#!/usr/bin/env bash
# Downloads the Debian packages the GPU build needs beside pip torch (abseil)
# into .debs/ (git-ignored); scripts/gpu_build.sh unpacks them into /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .debs && cd .debs
apt-get download libabsl-dev libabsl20220623
