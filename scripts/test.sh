#!/usr/bin/env bash
# Runs every test suite. GPU-labelled tests skip with a message where no CUDA device is present.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${JOBS:-$(nproc)}" "$@"
