#!/usr/bin/env bash
# One device call: the whole decode step of a model with --breakdown (each op of a layer alone against the bytes it
# moves), then Nsight Compute on the first layers' decode kernels of the eager step (GEMV projections, the MoE
# experts, the attention's attend and combine): speed of light, memory, occupancy and warp stall reasons, as CSV.
# Usage there: source .devdeps/prelude.sh; RTP_COMMIT=<hash> bash scripts/device/ncu_decode_step.sh
# (env: CONFIG, LENGTH, KERNELS (an ncu regex), COUNT (kernels profiled; the dense step comes first))
set -uo pipefail
OUT=${OUT:-out/device}; mkdir -p "$OUT"
CONFIG=${CONFIG:-qwen3-30b-a3b}; LENGTH=${LENGTH:-4096}
KERNELS=${KERNELS:-"(^|::)(experts_one_launch_kernel|gemv_kernel|gemv_whole_rows_kernel|attend_v2_kernel|attend_mma_kernel|combine_kernel)(<|$)"}; COUNT=${COUNT:-12}
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a -DRTPURBO_BUILD_TESTS=OFF \
  > /tmp/cmake.log 2>&1 || { tail -20 /tmp/cmake.log; exit 1; }
ninja -C build-gpu -j16 rtpurbo-bench-decode > /tmp/build.log 2>&1 || { grep -E "error|FAILED" -A3 /tmp/build.log | head; exit 1; }
echo "built after $(( $(date +%s) - start )) s (${RTP_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)})"
B=build-gpu/bin/rtpurbo-bench-decode
timeout 240 $B --config data/configs/$CONFIG --lengths $LENGTH --tokens 24 --paths graphs --breakdown \
  --out "$OUT/breakdown.json" > "$OUT/breakdown.log" 2>&1; echo "breakdown: exit $?"
grep -E "ms/token|graphs|^(attention|MoE|MLP|head) |sum of ops" "$OUT/breakdown.log"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found"; exit 0; }
SECTIONS="--section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats"

left=$(( 570 - ($(date +%s) - start) )); [ $left -gt 30 ] || { echo "ncu: skipped (time)"; exit 0; }
timeout $left "$NCU" --clock-control none -k regex:"$KERNELS" -c $COUNT $SECTIONS --csv --page details \
  $B --config data/configs/$CONFIG --lengths $LENGTH --tokens 1 --paths eager --out /tmp/ncu-bench.json \
  > "$OUT/ncu-decode-step.csv" 2> "$OUT/ncu-decode-step.err"
echo "ncu: rc $?, $(wc -l < "$OUT/ncu-decode-step.csv") lines after $(( $(date +%s) - start )) s"; tail -3 "$OUT/ncu-decode-step.err"
