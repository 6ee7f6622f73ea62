#!/usr/bin/env bash
# One device call: build the kernel bench (scripts/device/kernels_bench.sh with a short bench), then Nsight Compute
# on the prefill selection at 1M tokens (the logits_kernel and topp_kernel launches of the 15th of 16 query-block chunks): $OUT/ncu-select-1m.csv.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/device/kernels_bench.sh --lengths 32768 --decode-lengths 32768 --reps 1 > "$OUT/kernels_bench.log" 2>&1
grep -E "PASSED|FAILED" "$OUT/kernels_bench.log" | tail -2
rm -f "$OUT"/cmake.log "$OUT"/build.log "$OUT"/ref_test.log "$OUT"/bench.log "$OUT"/bench-*.json
source .devdeps/prelude.sh
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
timeout 400 "$NCU" --clock-control none -k regex:"logits_kernel|topp_kernel" -s ${SKIP:-28} -c ${COUNT:-2} --section SpeedOfLight \
  --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --csv --page details \
  build-gpu-k/rtpurbo-bench --out /tmp/ncu-bench --lengths 1048576 --decode-lengths 32768 --baseline-max 0 \
  --reps 1 > "$OUT/ncu-select-1m.csv" 2> "$OUT/ncu-select-1m.err"
echo "ncu: rc $?, $(wc -l < "$OUT/ncu-select-1m.csv") lines"; tail -3 "$OUT/ncu-select-1m.err"
