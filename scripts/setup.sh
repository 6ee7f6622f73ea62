#!/usr/bin/env bash
# Installs what the build needs (idempotent), configures and builds into ./build.
# Fresh Debian 12: apt packages for the C++ dependencies, libtorch from PyPI's torch==2.11.0 (CUDA 13 build).
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES="cmake ninja-build g++ python3-pip libyaml-cpp-dev libcxxopts-dev libhdf5-dev libgtest-dev nlohmann-json3-dev libicu-dev libgloo-dev"
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
PY=${PYTHON:-python3}
if ! $PY -c 'import torch,sys; sys.exit(0 if torch.__version__.startswith("2.11.0") else 1)' 2>/dev/null; then
  echo "setup: installing torch==2.11.0 from PyPI (libtorch for the build)"
  $PY -m pip install -q torch==2.11.0
fi
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$JOBS"
echo "setup: built into $BUILD_DIR"
