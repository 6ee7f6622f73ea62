#!/usr/bin/env bash
# One device call: build and test (scripts/device/kernels_bench.sh with a short bench), then Nsight Compute on
# the prefill attention kernels at 32K (the layer with a retrieval head, then the streaming-only one): issue,
# warp-state and memory counters as CSV in $OUT/ncu-prefill-attn.csv.
# Usage there: RTP_COMMIT=<hash> bash scripts/device/ncu_prefill.sh [kernel regex]
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash scripts/device/kernels_bench.sh --lengths 32768 --decode-lengths 32768 --reps 3 > "$OUT/kernels_bench.log" 2>&1
grep -E "PASSED|FAILED" "$OUT/kernels_bench.log" | tail -3
sed -n '/^card/,/^decode/p' "$OUT/kernels_bench.log"
rm -f "$OUT/cmake.log" "$OUT/build.log" "$OUT/ref_test.log" "$OUT/bench.log" "$OUT"/bench-*.json
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found"; exit 0; }
source .devdeps/prelude.sh
SECTIONS="--section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section InstructionStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis"
METRICS='--metrics regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$,regex:^sm__pipe_tensor_op_.*cycles_active\.avg\.pct_of_peak_sustained_active$'
timeout 240 "$NCU" --clock-control none -k regex:"${1:-sparse_prefill_wgmma_ws_kernel}" -c 2 $SECTIONS $METRICS --csv --page details \
  build-gpu-k/rtpurbo-bench --out /tmp/ncu-bench --lengths 32768 --decode-lengths 32768 --reps 1 \
  > "$OUT/ncu-prefill-attn.csv" 2> "$OUT/ncu-prefill-attn.err"
echo "ncu: rc $?, $(wc -l < "$OUT/ncu-prefill-attn.csv") lines"; tail -3 "$OUT/ncu-prefill-attn.err"
grep -E '"(smsp__average_warps_issue_stalled|sm__pipe_tensor)' "$OUT/ncu-prefill-attn.csv" | awk -F'","' '$NF+0 > 0.05 {print $(NF-2)" = "$NF}' | sort -u | head -40
grep -E '"(Duration|Compute \(SM\) Throughput|Issue Slots Busy|Issued Warp Per Scheduler|No Eligible|Warp Cycles Per Issued Instruction|Stall [A-Za-z ]*|Executed Ipc Active|L2 Cache Throughput|L1/TEX Cache Throughput|DRAM Throughput|Achieved Occupancy|Registers Per Thread)"' "$OUT/ncu-prefill-attn.csv" | awk -F'","' '{print $(NF-2)" = "$NF}' | head -60
