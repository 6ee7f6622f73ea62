#!/usr/bin/env bash
# One device call: scripts/device/kernels_bench.sh (build, CPU-reference and GPU tests, the default bench), then
# the decode launch choices (kernels::DecodeTuning through rtpurbo-bench flags) one at a time at 128K and 1M KV.
# Prints one line per choice: eager and graph per-layer times (mix, streaming-only, with retrieval) and speedup
# vs FA2. Usage there: RTP_COMMIT=<hash> bash scripts/device/decode_sweep.sh ["choice flags" ...]
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/sweep"
BENCH_ARGS="--lengths 32768 --decode-lengths 131072,1048576 --reps 3"
bash scripts/device/kernels_bench.sh $BENCH_ARGS > "$OUT/kernels_bench.log" 2>&1
grep -E "PASSED|FAILED|tests ran" "$OUT/kernels_bench.log" | tail -6
summarize() {  # the newest JSON under $1, one line per decode length
  python3 - "$1" "$2" <<'PY'
import glob, json, os, sys
f = max(glob.glob(os.path.join(sys.argv[1], "bench-*.json")), key=os.path.getmtime)
for r in json.load(open(f))["decode"]:
    print(f"{sys.argv[2]:40s} L={r['L']:>8}  eager mix {r['sparse_us']:6.1f} (str {r['streaming_only_us']:5.1f}, ret "
          f"{r['layer_with_retrieval_us']:6.1f}) x{r['speedup_vs_fa2']:.2f} | graph mix {r['graph_sparse_us']:6.1f} "
          f"(str {r['graph_streaming_only_us']:5.1f}, ret {r['graph_layer_with_retrieval_us']:6.1f}) "
          f"x{r['graph_speedup_vs_fa2']:.2f}")
PY
}
summarize "$OUT" default | tee "$OUT/sweep.txt"
CHOICES=("$@")
[ ${#CHOICES[@]} -eq 0 ] && CHOICES=("--decode-index-rows 1" "--decode-streaming-keys 64" "--decode-streaming-keys 256"
  "--decode-retrieval-candidates 512" "--decode-retrieval-candidates 2048" "--decode-index-tokens 1024")
for c in "${CHOICES[@]}"; do
  timeout 120 build-gpu-k/rtpurbo-bench --out "$OUT/sweep" $BENCH_ARGS $c > "$OUT/sweep/last.log" 2>&1 \
    || { echo "$c: failed"; tail -5 "$OUT/sweep/last.log"; continue; }
  summarize "$OUT/sweep" "$c" | tee -a "$OUT/sweep.txt"
done
