#!/usr/bin/env bash
# One device call on one GPU: build rtpurbo-train and every gpu-labelled test, run those tests (ctest -L gpu) and
# sparse_cache_test, then the Qwen3-30B-A3B indexer stage at 32K with 2 sequences in micro-batches of 1 (peak
# memory with micro-batching). Usage there: source .devdeps/prelude.sh; OUT=$OUT bash scripts/device/gpu_tests_and_30b.sh
set -uo pipefail
OUT=${OUT:-out/device}; mkdir -p "$OUT"
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a -DRTPURBO_BUILD_TESTS=ON \
  > "$OUT/cmake.log" 2>&1 || { tail -20 "$OUT/cmake.log"; exit 1; }
GPU_TESTS=$(cd tests && ls */*_gpu_test.cpp | xargs -n1 basename | sed 's/\.cpp$//')
ninja -C build-gpu -j"$(nproc)" rtpurbo-train sparse_cache_test $GPU_TESTS > "$OUT/build.log" 2>&1 \
  || { grep -E "error|FAILED" -A3 "$OUT/build.log" | head -30; exit 1; }
echo "built after $(( $(date +%s) - start )) s"; rm -f "$OUT/build.log" "$OUT/cmake.log"
for t in $GPU_TESTS sparse_cache_test; do
  timeout 200 build-gpu/tests/$t > "$OUT/$t.log" 2>&1; echo "$t: rc $? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/$t.log" | tr '\n' ' ')"
done
timeout 150 build-gpu/bin/rtpurbo-train --recipe recipes/qwen3-30b-a3b-scale.yaml --batch_size 2 --steps 3 \
  --out_dir runs/q30b-g1-b2 > "$OUT/q30b-g1-b2.log" 2>&1
echo "q30b-g1-b2 (micro_batch 1): rc $? $(grep 'indexer step' "$OUT/q30b-g1-b2.log" | tail -1)"
echo "done after $(( $(date +%s) - start )) s"
