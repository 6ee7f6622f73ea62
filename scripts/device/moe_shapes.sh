#!/usr/bin/env bash
# On the GPU machine: the MoE decode kernels' launch shapes (MoeDecodeLaunchShape) on Qwen3-30B-A3B. One process with
# --breakdown times every shape as an op (each a "(compare)" row) and the default's whole decode step; then the whole
# step once per shape in SHAPES ("rows,warps,ahead", rtpurbo-bench-decode --moe-launch-shape), while the time left
# (DEADLINE seconds from the start) allows. TESTS run after the build; EXTRA_RUNS (';'-separated rtpurbo-bench-decode
# argument lists) run after the shapes; TESTS_LATE after the breakdown. Everything under $OUT.
# Usage there: source .devdeps/prelude.sh; RTP_COMMIT=<commit> SHAPES="2,4,1 4,8,1" OUT=$OUT bash scripts/device/moe_shapes.sh
set -uo pipefail
OUT=${OUT:-out/device}; mkdir -p "$OUT"
TESTS=${TESTS-"moe_decode_gpu_test"}
SHAPES=${SHAPES-"2,4,1 4,8,1"}
DEADLINE=${DEADLINE:-540}
CONFIG=${CONFIG:-data/configs/qwen3-30b-a3b}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a -DRTPURBO_BUILD_TESTS=ON \
  > "$OUT/cmake.log" 2>&1 || { tail -20 "$OUT/cmake.log"; exit 1; }
ninja -C build-gpu -j16 rtpurbo-bench-decode $TESTS ${TESTS_LATE:-} > /tmp/build.log 2>&1 || { grep -E "error|FAILED" -A3 /tmp/build.log | head -30; exit 1; }
echo "built after $(elapsed) s"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
run_tests() {
  for t in "$@"; do
    { echo "== $t"; timeout 240 build-gpu/tests/$t 2>&1; echo "$t: exit $?"; } > /tmp/$t.log
    cat /tmp/$t.log >> "$OUT/tests.log"
    echo "$t: $(tail -1 /tmp/$t.log | sed 's/.*: //') $(grep -E '^\[  (PASSED|FAILED)|SKIPPED \]|FAILED  \]' /tmp/$t.log | tr '\n' ' ') (at $(elapsed) s)"
  done
}
run_tests $TESTS
bench() {  # name, arguments...
  local name=$1; shift
  RTP_COMMIT=${RTP_COMMIT:-} timeout $(( DEADLINE - $(elapsed) )) build-gpu/bin/rtpurbo-bench-decode "$@" \
    --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  echo "=== $name: $* (exit $?, at $(elapsed) s)"
  grep -E "^ +[0-9]+ +(dense|sparse) |experts" "$OUT/$name.log"
}
bench breakdown --config $CONFIG --lengths 4096 --tokens 16 --paths graphs --breakdown
run_tests ${TESTS_LATE:-}
for s in $SHAPES; do
  [ $(elapsed) -lt $(( DEADLINE - 60 )) ] || { echo "skipped (time): shape $s"; continue; }
  bench "shape-${s//,/-}" --config $CONFIG --lengths 4096 --tokens 16 --paths graphs --moe-launch-shape $s
done
IFS=';' read -ra extra <<< "${EXTRA_RUNS:-}"
k=0
for r in "${extra[@]}"; do
  k=$((k + 1)); [ $(elapsed) -lt $(( DEADLINE - 30 )) ] || { echo "skipped (time): $r"; continue; }
  # shellcheck disable=SC2086
  bench extra-$k $r
done
echo "done after $(elapsed) s"
# The device tool brings back at most 8 files per call: everything in one archive.
tar czf /tmp/moe-shapes.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/moe-shapes.tgz "$OUT/"
