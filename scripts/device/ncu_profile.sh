#!/usr/bin/env bash
# One device call: scripts/device/kernels_bench.sh (build, tests, the bench with whole-layer decode), then Nsight
# Compute on the kernels: decode at 128K KV (stats, hist, attend, combine) and prefill at 32K (pool, logits,
# top-p, attention). Counters per kernel as CSV: $OUT/ncu-decode.csv, $OUT/ncu-prefill.csv.
# Usage there: RTP_COMMIT=<hash> bash scripts/device/ncu_profile.sh
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/device/kernels_bench.sh --lengths 32768,131072 --decode-lengths 32768,131072,1048576 --reps 3 \
  > "$OUT/kernels_bench.log" 2>&1
grep -E "PASSED|FAILED" "$OUT/kernels_bench.log" | tail -3
sed -n '/^card/,$p' "$OUT/kernels_bench.log"
rm -f "$OUT/cmake.log" "$OUT/build.log" "$OUT/ref_test.log" "$OUT/bench.log"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found"; exit 0; }
SECTIONS="--section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis"
source .devdeps/prelude.sh
timeout 240 "$NCU" --clock-control none -k regex:"stats_kernel|hist_kernel|attend_mma_kernel|combine_kernel" -c 8 \
  $SECTIONS --csv --page details build-gpu-k/rtpurbo-bench --out /tmp/ncu-bench --lengths 32768 \
  --decode-lengths 131072 --reps 1 > "$OUT/ncu-decode.csv" 2> "$OUT/ncu-decode.err"
echo "ncu decode: rc $?, $(wc -l < "$OUT/ncu-decode.csv") lines"; tail -3 "$OUT/ncu-decode.err"
timeout 240 "$NCU" --clock-control none -k regex:"pool_kernel|logits_kernel|topp_kernel|sparse_prefill_kernel" -c 6 \
  $SECTIONS --csv --page details build-gpu-k/rtpurbo-bench --out /tmp/ncu-bench --lengths 32768 \
  --decode-lengths 32768 --reps 1 > "$OUT/ncu-prefill.csv" 2> "$OUT/ncu-prefill.err"
echo "ncu prefill: rc $?, $(wc -l < "$OUT/ncu-prefill.csv") lines"; tail -3 "$OUT/ncu-prefill.err"
