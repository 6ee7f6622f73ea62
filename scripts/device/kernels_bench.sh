#!/usr/bin/env bash
# One device call: build the kernel targets, run the CPU-reference and GPU tests, run the benchmark.
# Usage (device machine, repo root): scripts/device/kernels_bench.sh [bench args...]
set -o pipefail
source .devdeps/prelude.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cmake -S . -B build-gpu -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
ninja -C build-gpu -j16 sparse_attention_ref_test sparse_attention_gpu_test rtpurbo-bench 2>&1 | tail -5 | tee "$OUT/build.log" || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
build-gpu/tests/sparse_attention_ref_test 2>&1 | tail -3 | tee "$OUT/ref_test.log"
timeout 150 build-gpu/tests/sparse_attention_gpu_test 2>&1 | grep -E "err|Jaccard|OK|FAIL|Failure|Expected|actual|PASSED|SKIP" | tee "$OUT/gpu_test.log"
timeout 300 build-gpu/bin/rtpurbo-bench --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
