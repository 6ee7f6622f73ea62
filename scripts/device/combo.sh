#!/usr/bin/env bash
# One device call for two jobs that share the GPU: the toy pretraining sweep (toy_pretrain_sweep.sh) and the
# kernel tests + benchmark (kernels_bench.sh), whose timing waits until the sweep has ended. Everything but the
# best model and the benchmark JSON comes back in one archive (the device returns at most 8 files).
# Usage there: source .devdeps/prelude.sh; OUT=$OUT bash scripts/device/combo.sh [bench args...]
set -uo pipefail
OUT=${OUT:-out/device}
mkdir -p "$OUT/logs/k"
rm -f /tmp/sweep.done
(OUT="$OUT/logs" bash scripts/device/toy_pretrain_sweep.sh > "$OUT/logs/sweep-console.txt" 2>&1; touch /tmp/sweep.done) &
OUT="$OUT/logs/k" BENCH_AFTER=/tmp/sweep.done bash scripts/device/kernels_bench.sh "$@" > "$OUT/logs/kernels-console.txt" 2>&1
wait
[ -d "$OUT/logs/model" ] && mv "$OUT/logs/model" "$OUT/model"
mv "$OUT"/logs/k/bench-*.json "$OUT"/ 2>/dev/null
tail -25 "$OUT/logs/sweep-console.txt"; tail -30 "$OUT/logs/kernels-console.txt"
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
