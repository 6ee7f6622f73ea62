#!/usr/bin/env bash
# One call on one GPU: (1) the SDPA gradient check per backend, (2) toy pretraining phase 1 (+ as much of phase 2 as
# fits) under different SDPA backends / autocast settings, while (3) the kernels' standalone build and GPU tests
# run; the kernel benchmark runs once the toy runs have ended (idle GPU).
# Usage there: source .devdeps/prelude.sh; bash scripts/device/diag_and_kernels.sh [bench args...]
set -uo pipefail
OUT=${OUT:-out/device}
start=$(date +%s)
mkdir -p runs /tmp/kout
python3 scripts/diagnostics/sdpa_grad_check.py > "$OUT/sdpa.txt" 2>&1; cat "$OUT/sdpa.txt"
rm -f /tmp/toy_done
( OUT=/tmp/kout BENCH_AFTER=/tmp/toy_done bash scripts/device/kernels_bench.sh "$@" > /tmp/kout/all.log 2>&1 ) &
kpid=$!
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a > runs/cmake.log 2>&1 || tail -20 runs/cmake.log
ninja -C build-gpu -j16 rtpurbo-train > runs/build.log 2>&1 || { grep -E "error|FAILED" -A3 runs/build.log | head -30; }
echo "trainer built after $(( $(date +%s) - start )) s"
declare -A V
V[v1]="--autocast bfloat16"
V[v2]="--autocast bfloat16 --sdpa_backend math"
V[v3]="--autocast none"
V[v4]="--autocast bfloat16 --sdpa_backend efficient"
toy_end=$(( start + ${TOY_BUDGET_S:-400} ))
for v in v1 v2 v3 v4; do
  ( ./build-gpu/bin/rtpurbo-train --recipe recipes/toy-pretrain-short.yaml ${V[$v]} --out_dir runs/$v-1 > runs/$v.log 2>&1
    echo "=== phase 2 at $(( $(date +%s) - start )) s" >> runs/$v.log
    left=$(( toy_end - $(date +%s) ))
    [ $left -gt 20 ] && timeout $left ./build-gpu/bin/rtpurbo-train --recipe recipes/toy-pretrain.yaml \
      --model_dir runs/$v-1/model ${V[$v]} --steps 1200 --out_dir runs/$v-2 >> runs/$v.log 2>&1 ) &
done
wait $(jobs -p | grep -v "^$kpid$")
touch /tmp/toy_done
echo "toy runs ended after $(( $(date +%s) - start )) s"
for v in v1 v2 v3 v4; do echo "== $v: ${V[$v]}"; grep -E "^step|phase 2|SDPA|final" runs/$v.log | awk 'NR%3==0 || /phase|SDPA|final/'; done > "$OUT/toy.txt"
cat "$OUT/toy.txt"
tar -czf "$OUT/toy-logs.tar.gz" runs/v*.log
wait $kpid
tar -cf "$OUT/kernels.tar" -C /tmp kout
grep -vE "^\s*$" /tmp/kout/gpu_test.log | tail -30; tail -40 /tmp/kout/bench.log
echo "all done after $(( $(date +%s) - start )) s"
