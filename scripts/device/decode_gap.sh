#!/usr/bin/env bash
# On the GPU machine: why rtpurbo-eval's RULER decode is slower per token than rtpurbo-bench-decode on the same
# architecture. Times the bench's step loop and greedy_continue, then the eval on a random-weight Qwen3-0.6B, and
# samples the eval's host stacks with gdb while it decodes (where gdb exists).
# Usage there: source .devdeps/prelude.sh; bash scripts/device/decode_gap.sh
set -uo pipefail
OUT=${OUT:-out/device}
mkdir -p "$OUT"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a -DRTPURBO_BUILD_TESTS=OFF > /tmp/cmake.log 2>&1 || { tail -20 /tmp/cmake.log; exit 1; }
ninja -C build-gpu -j16 rtpurbo-eval rtpurbo-bench-decode > /tmp/build.log 2>&1 || { grep -E "error|FAILED" -A3 /tmp/build.log | head -30; exit 1; }
build-gpu/bin/rtpurbo-bench-decode --config data/configs/qwen3-0.6b --lengths 4096 --tokens 64 --paths graphs,greedy \
  --out "$OUT/gap-bench.json" 2>/dev/null
python3 scripts/device/make_random_qwen3.py /tmp/gap-model > /dev/null 2>&1
echo "tools: $(which gdb perf 2>/dev/null | tr '\n' ' ')"
build-gpu/bin/rtpurbo-eval --task ruler --model /tmp/gap-model --dense --tasks ruler:niah_single_1 --lengths 4096 \
  --samples 4 --device cuda --dtype bfloat16 --out-dir /tmp/gap-out > /tmp/gap-eval.log 2>&1 &
pid=$!
if which gdb > /dev/null 2>&1; then
  sleep ${SAMPLE_AFTER:-12}
  for i in 1 2 3 4 5 6; do
    gdb -p $pid -batch -ex "thread 1" -ex "bt 14" 2>/dev/null | grep -E "^#" | cut -c1-160 >> "$OUT/gap-stacks.txt"
    echo "----" >> "$OUT/gap-stacks.txt"
    sleep 0.7
  done
fi
wait $pid
tail -3 /tmp/gap-eval.log
python3 -c "
import json; d = json.load(open('/tmp/gap-out/ruler.json'))
for r in d['results']: print(r['task'], r['length'], 'prefill %.2f s' % r['dense_prefill_s'], 'decode %.2f s' % r['dense_decode_s'], '%.2f ms/token' % r['dense_decode_ms_per_token'], r['dense_generated_tokens'], 'tokens')"
