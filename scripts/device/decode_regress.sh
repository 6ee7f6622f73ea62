#!/usr/bin/env bash
# Decode speed of the working tree against other commits on the same card: rtpurbo-bench's decode at 128K KV (ARGS),
# runs alternating, then more runs of the working tree alone (EXTRA), after the working tree's decode GPU tests.
# TREES: the commits to compare with, as name=commit (default old=13e7d51, the last H200 bench before the device-
# length decode, and head=HEAD); empty: the working tree alone.
# Usage there: source .devdeps/prelude.sh; OUT=$OUT bash scripts/device/decode_regress.sh
set -uo pipefail
TREES=${TREES-"old=13e7d51 head=HEAD"}
CM="-G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a"
TESTS=${TESTS-"sparse_attention_gpu_test decode_length_gpu_test decode_stepper_gpu_test decode_splits_test"}
start=$(date +%s)
names=()
for t in $TREES; do
  n=${t%%=*}; ref=${t#*=}; names+=("$n")
  mkdir -p /tmp/$n && git archive "$ref" | tar -x -C /tmp/$n || { echo "git archive $ref failed"; exit 1; }
done
build() {  # source dir, build dir, targets...
  local s=$1 b=$2; shift 2
  cmake -S $s -B $b $CM -DRTPURBO_BUILD_TESTS=ON > $b.cmake.log 2>&1 && ninja -C $b -j$(( 16 / (${#names[@]} + 1) )) "$@" > $b.build.log 2>&1
  echo "$b: build exit $? $(grep -m3 -E 'error' $b.build.log)"
}
for n in "${names[@]}"; do build /tmp/$n /tmp/$n-b rtpurbo-bench & done
build . build-gpu rtpurbo-bench rtpurbo-bench-decode $TESTS &
wait; echo "built after $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in $TESTS; do
  { echo "== $t"; timeout 200 build-gpu/tests/$t 2>&1; echo "$t: exit $?"; } > /tmp/$t.log
  cat /tmp/$t.log >> "$OUT/tests.log"
  echo "$t: $(tail -1 /tmp/$t.log | sed 's/.*: //') $(grep -E '^\[  (PASSED|FAILED)' /tmp/$t.log | tr '\n' ' ')"
done
A=${ARGS:-"--lengths 32768 --baseline-max 0 --decode-lengths 131072 --reps 5"}
L=$OUT/regress.log
if [ ${#names[@]} -gt 0 ]; then
  for i in 1 2; do
    for w in "${names[@]}" work; do
      b=/tmp/$w-b/bin/rtpurbo-bench; [ $w = work ] && b=build-gpu/bin/rtpurbo-bench
      echo "=== $w run $i" >> $L; $b --out /tmp/r-$w-$i $A >> $L 2>&1
    done
  done
  cp /tmp/r-work-2/*.json "$OUT/" 2>/dev/null
  grep -E "^===|^  131072" $L
fi
# EXTRA: runs of the working tree's rtpurbo-bench, one argument list per ';'-separated item, same log.
IFS=';' read -ra runs <<< "${EXTRA:-}"
for r in "${runs[@]}"; do
  build-gpu/bin/rtpurbo-bench --out /tmp/r-extra $r > /tmp/extra.log 2>&1
  { echo "=== work $r"; cat /tmp/extra.log; } >> $L
  echo "=== work $r"; grep -A30 "^decode (us per layer" /tmp/extra.log | grep -E "^ +[0-9]"
done
# DECODE: one rtpurbo-bench-decode argument list for the working tree.
if [ -n "${DECODE:-}" ]; then
  build-gpu/bin/rtpurbo-bench-decode $DECODE --out "$OUT/decode-steps.json" > "$OUT/bench-decode.log" 2>&1
  echo "rtpurbo-bench-decode: exit $?"; grep -E "^ +[0-9]+ +(dense|sparse)|index tokens|length on the device" "$OUT/bench-decode.log"
fi
echo "done after $(( $(date +%s) - start )) s"
