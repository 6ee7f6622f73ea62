#!/usr/bin/env bash
# On the GPU machine: rtpurbo-eval --task ruler with the dense model only on a random Qwen3-0.6B-shaped model (the real
# Qwen3 tokenizer), with and without CUDA graphs: the generation path of the tool end to end, cheaply (no conversion).
# Usage there: source .devdeps/prelude.sh; bash scripts/device/ruler_dense_smoke.sh (env: TASKS, LENGTHS, SAMPLES)
set -euo pipefail
OUT=${OUT:-out/device}
mkdir -p "$OUT"
W=/tmp/rds
rm -rf "$W" && mkdir -p "$W"
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a -DRTPURBO_BUILD_TESTS=OFF > /tmp/cmake.log 2>&1 || { tail -20 /tmp/cmake.log; exit 1; }
ninja -C build-gpu -j16 rtpurbo-eval > /tmp/build.log 2>&1 || { grep -E "error|FAILED" -A3 /tmp/build.log | head -30; exit 1; }
echo "built after $(( $(date +%s) - start )) s"
python3 scripts/device/make_random_qwen3.py "$W/model"  # Qwen3-0.6B architecture, random bf16 weights
for g in "" "--no-cuda-graphs"; do
  echo "eval ${g:-with graphs} starts $(date +%T.%N)"
  build-gpu/bin/rtpurbo-eval --task ruler --model "$W/model" --dense --tasks ${TASKS:-ruler:niah_single_1,ruler:vt} \
    --lengths ${LENGTHS:-4096,32768} --samples ${SAMPLES:-1} --device cuda --dtype bfloat16 $g --out-dir "$W/out$g" 2>&1 | grep -vE "^ruler " | tail -6
  python3 -c "
import json; d = json.load(open('$W/out$g/ruler.json'))
print('graphs' if d['cuda_graphs'] else 'eager', 'stop ids', d['stop_token_ids'])
for r in d['results']: print(r['task'], r['length'], 'prefill %.2f s' % r['dense_prefill_s'], 'decode %.2f ms/token' % r['dense_decode_ms_per_token'], r['dense_generated_tokens'], 'tokens')"
done
echo "done after $(( $(date +%s) - start )) s"
