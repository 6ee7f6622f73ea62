#!/usr/bin/env bash
# On the GPU machine: the decode kernel with the length on the device (against the host-length call, in a CUDA graph,
# dense heads against float64) and its split rules, the sparse attention kernels' tests, the decode stepper's GPU tests
# (CUDA graphs against forward, dense and sparse cache), the MoE
# decode and router, fused norm/RoPE, SwiGLU and sparse token store kernel tests, HF parity on CUDA, the generation and sparse-cache tests, then
# rtpurbo-bench-decode on the Qwen3-0.6B, Qwen3-8B and Qwen3-30B-A3B architectures with random bf16 weights.
# Results (logs, JSON) in $OUT.
# Usage there: source .devdeps/prelude.sh; RTP_COMMIT=<hash> bash scripts/device/decode_steps.sh
# (env: TESTS to run another list, CONFIGS, LENGTHS, TOKENS, PATHS, BENCH_LIMIT, TEST_LIMIT; BENCH_ARGS appended to
# every bench command, e.g. --breakdown)
set -uo pipefail
OUT=${OUT:-out/device}
mkdir -p "$OUT"
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a -DRTPURBO_BUILD_TESTS=ON > /tmp/cmake.log 2>&1 || { tail -20 /tmp/cmake.log; exit 1; }
TESTS=${TESTS:-"decode_length_gpu_test decode_splits_test sparse_attention_gpu_test decode_stepper_gpu_test decode_stepper_test moe_decode_gpu_test moe_decode_ref_test norm_rope_gpu_test norm_rope_ref_test swiglu_gpu_test sparse_token_store_gpu_test moe_router_gpu_test kv_token_store_gpu_test gemv_gpu_test qwen3_parity_gpu_test generation_test sparse_cache_test"}
ninja -C build-gpu -j16 $TESTS rtpurbo-bench-decode > /tmp/build.log 2>&1 || { grep -E "error|FAILED" -A3 /tmp/build.log | head -30; exit 1; }
echo "built after $(( $(date +%s) - start )) s"
for t in $TESTS; do
  # One log for all tests: the device tool returns only a few files.
  { echo "== $t"; timeout ${TEST_LIMIT:-240} build-gpu/tests/$t 2>&1; echo "$t: exit $?"; } > /tmp/$t.log
  cat /tmp/$t.log >> "$OUT/tests.log"; grep -E "max \||PASSED|FAILED|Failure|CUDA max|exit" /tmp/$t.log | head -12
done
for cfg in ${CONFIGS:-qwen3-0.6b qwen3-8b qwen3-30b-a3b}; do
  timeout ${BENCH_LIMIT:-200} build-gpu/bin/rtpurbo-bench-decode --config data/configs/$cfg --lengths ${LENGTHS:-4096,32768} \
    --tokens ${TOKENS:-24} --paths ${PATHS:-grouped,forward,eager,graphs} ${BENCH_ARGS:-} --out "$OUT/decode-steps-$cfg.json" 2>/tmp/bench-$cfg.err; echo "bench $cfg: exit $?"
  tail -3 /tmp/bench-$cfg.err
done
echo "done after $(( $(date +%s) - start )) s"
