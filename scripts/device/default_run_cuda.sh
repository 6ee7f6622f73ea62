#!/usr/bin/env bash
# On the GPU machine: the README's main job (scripts/run-default.sh) on CUDA instead of the CPU, plus the gpu-labelled
# model and sparse-cache tests. Returns $OUT/default-cuda.log and $OUT/eval-cuda.json.
# Usage there: source .devdeps/prelude.sh; bash scripts/device/default_run_cuda.sh
set -uo pipefail
OUT=${OUT:-out/device}
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a -DRTPURBO_BUILD_TESTS=ON > /tmp/cmake.log 2>&1 || { tail -20 /tmp/cmake.log; exit 1; }
ninja -C build-gpu -j16 rtpurbo-identify-heads rtpurbo-train rtpurbo-export rtpurbo-eval qwen3_parity_gpu_test sparse_cache_test sparse_attention_gpu_test > /tmp/build.log 2>&1 || { grep -E "error|FAILED" -A3 /tmp/build.log | head -30; exit 1; }
echo "built after $(( $(date +%s) - start )) s"
DEVICE=cuda BUILD_DIR=build-gpu OUT_DIR=out/cuda bash scripts/run-default.sh 2>&1 | tee "$OUT/default-cuda.log" | grep -vE "^indexer step|^sequence"
cp out/cuda/eval/eval.json "$OUT/eval-cuda.json" 2>/dev/null
echo "default run on CUDA done after $(( $(date +%s) - start )) s"
timeout 120 build-gpu/tests/qwen3_parity_gpu_test 2>&1 | tail -4
timeout 120 build-gpu/tests/sparse_cache_test 2>&1 | tail -3
# The main build's prefill kernels (wgmma where this build has sm_90a code): the test prints a note when it is absent.
timeout 300 build-gpu/tests/sparse_attention_gpu_test 2>&1 | grep -E "note:|wgmma|PASSED|FAILED" | tail -12
