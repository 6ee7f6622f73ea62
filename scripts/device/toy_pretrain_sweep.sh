#!/usr/bin/env bash
# On the GPU machine: pretrain several toy-task variants concurrently (a 4M-parameter model leaves the GPU mostly
# idle, so they share it well) and bring back the most accurate one. Variants are recipe overrides.
# Usage there: source .devdeps/prelude.sh; bash scripts/device/toy_pretrain_sweep.sh
set -uo pipefail
OUT=${OUT:-out/device}
mkdir -p "$OUT/model"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a > "$OUT/cmake.log" 2>&1 || exit 1
ninja -C build-gpu -j16 rtpurbo-train > "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head; exit 1; }
SHORT="--toy_spans 2 --toy_span_len 16 --toy_needles 16 --toy_queries 12 --curriculum_start_len 256 --warmup_steps 150 --steps ${STEPS:-3000}"
declare -A V
V[a]="$SHORT --toy_key_len 1 --toy_value_len 1 --answer_loss_weight 10 --lr 1e-3 --curriculum_steps 1500"
V[b]="$SHORT --toy_key_len 2 --toy_value_len 2 --answer_loss_weight 10 --lr 1e-3 --curriculum_steps 1500"
V[c]="$SHORT --toy_key_len 1 --toy_value_len 1 --answer_loss_weight 10 --lr 1e-3 --curriculum_steps 1000 --seq_len 512"
V[d]="$SHORT --toy_key_len 1 --toy_value_len 1 --answer_loss_weight 20 --lr 3e-3 --curriculum_steps 1500"
for v in "${!V[@]}"; do
  timeout ${PRETRAIN_SECONDS:-480} ./build-gpu/bin/rtpurbo-train --recipe recipes/toy-pretrain.yaml ${V[$v]} \
    --out_dir runs/sweep-$v > runs-$v.log 2>&1 &
done
wait
best=""; best_acc=-1
for v in "${!V[@]}"; do
  acc=$(python3 -c "import json;print(json.load(open('runs/sweep-$v/model/rtpurbo_toy_task.json'))['final_toy_accuracy'])" 2>/dev/null || echo -1)
  echo "variant $v: final accuracy $acc  (${V[$v]})" | tee -a "$OUT/sweep.txt"
  grep -E "toy_acc" runs-$v.log | tail -4 >> "$OUT/sweep.txt"
  if python3 -c "import sys;sys.exit(0 if float('$acc')>float('$best_acc') else 1)"; then best=$v; best_acc=$acc; fi
done
echo "best: $best ($best_acc)" | tee -a "$OUT/sweep.txt"
[ -n "$best" ] && cp runs/sweep-$best/model/{config.json,model.safetensors,rtpurbo_toy_task.json,train_recipe.yaml} "$OUT/model/" && cp runs-$best.log "$OUT/pretrain-best.log"
cat "$OUT/sweep.txt"
