#!/usr/bin/env bash
# One device call that checks a commit on one GPU: build every gpu- and multigpu-labelled test (the latter skip on one
# GPU), sparse_cache_test, decode_splits_test and the two benchmarks; run the tests (one summary line each, logs in
# $OUT/tests.log); then rtpurbo-bench at short lengths (BENCH: its arguments) and rtpurbo-bench-decode on the
# Qwen3-30B-A3B shape (DECODE: its arguments, empty to skip).
# Usage there: source .devdeps/prelude.sh; RTP_COMMIT=<commit> OUT=$OUT bash scripts/device/gpu_check.sh
set -uo pipefail
OUT=${OUT:-out/device}; mkdir -p "$OUT"
# The benchmarks record $RTP_COMMIT, else git HEAD, and a device copy's git metadata can lag its working tree.
[ -n "${RTP_COMMIT:-}" ] || echo "warning: RTP_COMMIT is not set: the bench JSON records git HEAD" \
  "($(git rev-parse --short HEAD 2>/dev/null)), which may not be the tree that ran"
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a -DRTPURBO_BUILD_TESTS=ON \
  > /tmp/cmake.log 2>&1 || { tail -20 /tmp/cmake.log; exit 1; }
GPU_TESTS=${TESTS:-$(cd tests && ls */*_gpu_test.cpp */*_multigpu_test.cpp | xargs -n1 basename | sed 's/\.cpp$//') sparse_cache_test decode_splits_test}
ninja -C build-gpu -j"$(nproc)" $GPU_TESTS rtpurbo-bench rtpurbo-bench-decode > /tmp/build.log 2>&1 \
  || { grep -E "error|FAILED" -A3 /tmp/build.log | head -30; exit 1; }
echo "built after $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in $GPU_TESTS; do
  t0=$(date +%s)
  { echo "== $t"; timeout ${TEST_LIMIT:-200} build-gpu/tests/$t 2>&1; echo "$t: exit $?"; } > /tmp/$t.log
  cat /tmp/$t.log >> "$OUT/tests.log"
  echo "$t: $(tail -1 /tmp/$t.log | sed 's/.*: //') $(grep -E '^\[  (PASSED|FAILED)|SKIPPED \]' /tmp/$t.log | tr '\n' ' ') ($(( $(date +%s) - t0 )) s)"
done
echo "tests done after $(( $(date +%s) - start )) s"
# The defaults are assigned first and expanded unquoted: "${BENCH-"a b"}" inline would pass "a b" as one argument.
BENCH_ARGS=${BENCH-"--lengths 32768,131072 --decode-lengths 131072 --baseline-max 131072 --reps 3"}
DECODE_ARGS=${DECODE-"--config data/configs/qwen3-30b-a3b --lengths 32768 --tokens 24 --paths graphs --breakdown"}
if [ -n "$BENCH_ARGS" ]; then
  timeout ${BENCH_LIMIT:-200} build-gpu/bin/rtpurbo-bench --out "$OUT" $BENCH_ARGS > "$OUT/bench.log" 2>&1
  echo "rtpurbo-bench: exit $?"; tail -25 "$OUT/bench.log"
fi
if [ -n "$DECODE_ARGS" ]; then
  timeout ${BENCH_LIMIT:-200} build-gpu/bin/rtpurbo-bench-decode $DECODE_ARGS --out "$OUT/decode-steps.json" \
    > "$OUT/bench-decode.log" 2>&1
  echo "rtpurbo-bench-decode: exit $?"; tail -15 "$OUT/bench-decode.log"
fi
echo "done after $(( $(date +%s) - start )) s"
