#!/usr/bin/env bash
# One call on a 2-GPU machine: the distributed-training measurements (dist_gpu.sh: 1 vs 2 GPUs over NCCL, a killed
# rank), then the two-phase toy pretraining sweep (toy_two_phase.sh) in the time left of a 600 s call.
# Usage there: source .devdeps/prelude.sh; HEADS=heads/heads.h5 bash scripts/device/dist_then_toy.sh
set -uo pipefail
OUT=${OUT:-out/device}
start=$(date +%s)
mkdir -p runs/dist
OUT=runs/dist bash scripts/device/dist_gpu.sh > runs/dist/dist.txt 2>&1
echo "dist_gpu.sh done after $(( $(date +%s) - start )) s" | tee -a runs/dist/dist.txt
tar -cf "$OUT/dist.tar" -C runs dist
cat runs/dist/dist.txt
left=$(( ${BUDGET_S:-575} - ($(date +%s) - start) ))
echo "toy sweep: $left s per variant"
SECONDS_PER_VARIANT=$left PHASE1_SECONDS=${PHASE1_SECONDS:-150} OUT=$OUT bash scripts/device/toy_two_phase.sh
