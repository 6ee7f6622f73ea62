#!/usr/bin/env bash
# Whole decode steps of the working tree against other commits on the same card: rtpurbo-bench-decode built from each
# tree, each RUNS item (';'-separated argument lists) run for every tree in the order A B ... B A, so drift on the card
# falls on both sides; then the working tree's TESTS. TREES: name=commit or name=commit+file.patch (default head=HEAD). The JSON of each
# run records its tree's commit (the working tree's: $RTP_COMMIT, else HEAD+worktree). BENCH: rtpurbo-bench arguments
# for the working tree, run last (empty: skip). BIN=rtpurbo-bench makes RUNS rtpurbo-bench argument lists instead (each
# run's JSON in its own directory). Everything it writes under $OUT ends in $OUT/step-regress.tgz.
# DEADLINE (seconds from the start, default 540): what would run past it is skipped, so the archive is written before
# the device call's limit. TESTS_FIRST=1: the tests before the runs.
# Usage there: source .devdeps/prelude.sh; RTP_COMMIT=<commit> OUT=$OUT bash scripts/device/step_regress.sh
set -uo pipefail
OUT=${OUT:-out/device}; mkdir -p "$OUT"
TREES=${TREES-"head=HEAD"}
TESTS=${TESTS-"decode_stepper_gpu_test"}
RUNS=${RUNS:-"--config data/configs/qwen3-30b-a3b --lengths 4096,32768 --tokens 16 --paths graphs"}
CM="-G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a -DRTPURBO_BUILD_TESTS=ON"
BIN=${BIN:-rtpurbo-bench-decode}
start=$(date +%s)
DEADLINE=${DEADLINE:-540}
left() { echo $(( DEADLINE - ($(date +%s) - start) )); }
names=()
declare -A commit=([work]=${RTP_COMMIT:-"$(git rev-parse --short HEAD 2>/dev/null)+worktree"})
for t in $TREES; do
  # name=commit, or name=commit+file.patch: that commit with the patch applied (an experiment not committed anywhere
  # the device's copy of the repository can see).
  n=${t%%=*}; ref=${t#*=}; patch=""; names+=("$n")
  case $ref in *+*) patch=${ref#*+}; ref=${ref%%+*} ;; esac
  commit[$n]=$(git rev-parse --short "$ref")${patch:++$(basename "$patch" .patch)}
  mkdir -p /tmp/$n && git archive "$ref" | tar -x -C /tmp/$n || { echo "git archive $ref failed"; exit 1; }
  [ -z "$patch" ] || patch -s -d /tmp/$n -p1 < "$patch" || { echo "$patch does not apply to $ref"; exit 1; }
done
build() {  # source dir, build dir, targets...
  local s=$1 b=$2; shift 2
  cmake -S $s -B $b $CM > $b.cmake.log 2>&1 && ninja -C $b -j$(( 16 / (${#names[@]} + 1) )) "$@" > $b.build.log 2>&1
  echo "$b: build exit $? $(grep -m3 -E 'error' $b.build.log)"
}
for n in "${names[@]}"; do build /tmp/$n /tmp/$n-b $BIN & done
build . build-gpu $BIN ${BENCH:+rtpurbo-bench} $TESTS &
wait; echo "built after $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
order=("${names[@]}" work work)
for (( i=${#names[@]}-1; i>=0; i-- )); do order+=("${names[$i]}"); done
run_tests() {
  for t in $TESTS; do
    [ $(left) -gt 20 ] || { echo "$t: skipped (time)"; continue; }
    t_s=$(left); [ $t_s -lt 300 ] || t_s=300
    { echo "== $t"; timeout $t_s build-gpu/tests/$t 2>&1; echo "$t: exit $?"; } > /tmp/$t.log
    cat /tmp/$t.log >> "$OUT/tests.log"
    echo "$t: $(tail -1 /tmp/$t.log | sed 's/.*: //') $(grep -E '^\[  (PASSED|FAILED)|SKIPPED \]' /tmp/$t.log | tr '\n' ' ')"
  done
}
[ -z "${TESTS_FIRST:-}" ] || run_tests
IFS=';' read -ra runs <<< "$RUNS"
k=0
for r in "${runs[@]}"; do
  for w in "${order[@]}"; do
    k=$((k + 1))
    b=/tmp/$w-b/bin/$BIN; [ $w = work ] && b=build-gpu/bin/$BIN
    o="$OUT/steps-$k-$w.json"; [ $BIN = rtpurbo-bench ] && o="$OUT/bench-$k-$w"
    [ $(left) -gt 30 ] || { echo "=== $w: $r skipped (time)"; continue; }
    RTP_COMMIT=${commit[$w]} timeout $(left) $b $r --out "$o" > "$OUT/steps-$k-$w.log" 2>&1
    echo "=== $w: $r (exit $?)"
    grep -E "^ +[0-9]+ +(dense|sparse) |^ +[0-9]+ +decode step|^       L |^ +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+x" "$OUT/steps-$k-$w.log"
  done
done
[ -n "${TESTS_FIRST:-}" ] || run_tests
if [ -n "${BENCH:-}" ]; then
  [ $(left) -gt 30 ] && RTP_COMMIT=${commit[work]} timeout $(left) build-gpu/bin/rtpurbo-bench --out "$OUT" $BENCH > "$OUT/bench.log" 2>&1
  echo "rtpurbo-bench: exit $?"; grep -A12 "^card" "$OUT/bench.log"
fi
echo "done after $(( $(date +%s) - start )) s"
# The device tool brings back only a few files per call: everything in one archive.
tar czf /tmp/step-regress.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/step-regress.tgz "$OUT/"
