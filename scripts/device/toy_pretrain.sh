#!/usr/bin/env bash
# On the GPU machine (device tool): build, run the CUDA model-parity test, pretrain the toy model.
# Usage there: source .devdeps/prelude.sh; bash scripts/device/toy_pretrain.sh
# Outputs under $OUT: parity_gpu.log, pretrain.log, model/ (the toy checkpoint, bf16).
set -uo pipefail
OUT=${OUT:-out/device}
mkdir -p "$OUT/model"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
time ninja -C build-gpu -j16 rtpurbo-train qwen3_parity_gpu_test > "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -30; exit 1; }
./build-gpu/tests/qwen3_parity_gpu_test 2>&1 | tee "$OUT/parity_gpu.log" | grep -E "max|OK|FAILED|PASSED"
time timeout ${PRETRAIN_SECONDS:-420} ./build-gpu/bin/rtpurbo-train --recipe recipes/toy-pretrain.yaml \
  --out_dir runs/toy-pretrain 2>&1 | tee "$OUT/pretrain.log" | grep -E "toy_acc|final|step [0-9]*000/"
cp runs/toy-pretrain/model/* "$OUT/model/" 2>/dev/null || echo "no final model (stopped early?)"
ls -la "$OUT/model"
