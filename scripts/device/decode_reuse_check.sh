#!/usr/bin/env bash
# On the GPU machine, cheaply: the decode stepper and sparse decode GPU tests, rtpurbo-bench-decode on Qwen3-0.6B
# (graphs), and rtpurbo-eval --task ruler (dense and sparse, random Qwen3-0.6B exported with random heads) with one
# cache and stepper reused across samples. Results in $OUT (tests.log, bench JSON, ruler.json).
# Usage there: source .devdeps/prelude.sh; [MODE=--both] bash scripts/device/decode_reuse_check.sh
set -uo pipefail
OUT=${OUT:-out/device}
mkdir -p "$OUT"
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a -DRTPURBO_BUILD_TESTS=ON > /tmp/cmake.log 2>&1 || { tail -20 /tmp/cmake.log; exit 1; }
ninja -C build-gpu -j16 decode_stepper_gpu_test decode_stepper_test sparse_attention_gpu_test rtpurbo-bench-decode \
  rtpurbo-eval > /tmp/build.log 2>&1 || { grep -E "error|FAILED" -A3 /tmp/build.log | head -30; exit 1; }
echo "built after $(( $(date +%s) - start )) s"
{ timeout 60 build-gpu/tests/decode_stepper_gpu_test; echo "decode_stepper_gpu_test: exit $?"
  timeout 60 build-gpu/tests/decode_stepper_test; echo "decode_stepper_test: exit $?"
  timeout 90 build-gpu/tests/sparse_attention_gpu_test --gtest_filter='*Decode*'; echo "sparse_attention_gpu_test (decode): exit $?"
} > "$OUT/tests.log" 2>&1
grep -E "exit|FAILED|Failure" "$OUT/tests.log"
timeout 120 build-gpu/bin/rtpurbo-bench-decode --config data/configs/qwen3-0.6b --lengths 4096,32768 --tokens 24 \
  --paths graphs --out "$OUT/decode-steps-qwen3-0.6b.json" 2>/dev/null | tail -5
python3 scripts/device/make_random_qwen3.py /tmp/rr-model > /dev/null 2>&1
for g in "" "--no-cuda-graphs"; do
  timeout 150 build-gpu/bin/rtpurbo-eval --task ruler --model /tmp/rr-model ${MODE:---dense} --tasks ruler:vt,ruler:niah_single_1 \
    --lengths 4096 --samples ${SAMPLES:-4} --device cuda --dtype bfloat16 $g --out-dir /tmp/rr-out$g > /tmp/rr.log 2>&1 || tail -5 /tmp/rr.log
  python3 -c "
import json; d = json.load(open('/tmp/rr-out$g/ruler.json'))
for r in d['results']:
  for m in ('dense', 'sparse'):
    if m + '_decode_ms_per_token' in r: print('graphs' if d['cuda_graphs'] else 'eager', m, r['task'], r['length'], 'decode %.2f ms/token' % r[m + '_decode_ms_per_token'], r[m + '_generated_tokens'], 'tokens')"
done
cp /tmp/rr-out/ruler.json "$OUT/ruler-dense-reuse.json" 2>/dev/null
echo "done after $(( $(date +%s) - start )) s"
