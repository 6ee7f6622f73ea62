#!/usr/bin/env bash
# On the GPU machine: pretrain several toy-task variants concurrently (a 4M-parameter model leaves a GPU mostly
# idle, so two runs share one well), spread over the visible GPUs, and bring back the most accurate one.
# Variants are recipe overrides of recipes/toy-pretrain.yaml.
# Usage there: source .devdeps/prelude.sh; bash scripts/device/toy_pretrain_sweep.sh
set -uo pipefail
OUT=${OUT:-out/device}
mkdir -p "$OUT/model"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a > "$OUT/cmake.log" 2>&1 || exit 1
ninja -C build-gpu -j"$(nproc)" rtpurbo-train > "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head; exit 1; }
rm -f "$OUT/cmake.log" "$OUT/build.log"  # only a failure's logs come back (the device returns at most 8 files)
NGPU=$(nvidia-smi -L | wc -l)
# Variants (bf16 autocast, ~415K tokens/s each with three sharing one H200): random-token spans copied later give
# induction a dense signal; b adds needles and queries, c doubles the spans.
RS="--autocast bfloat16 --toy_random_spans --toy_span_len 32 --steps ${STEPS:-3500}"
declare -A V
V[a]="$RS --toy_spans 4 --curriculum_start_len 512"
V[b]="$RS --toy_spans 4 --toy_needles 32 --toy_queries 28 --curriculum_start_len 640"
V[c]="$RS --toy_spans 8 --curriculum_start_len 704"
for v in "${!V[@]}"; do [[ " ${VARIANTS:-a b c} " == *" $v "* ]] || unset "V[$v]"; done
i=0
for v in $(echo "${!V[@]}" | tr ' ' '\n' | sort); do
  CUDA_VISIBLE_DEVICES=$((i % NGPU)) timeout ${PRETRAIN_SECONDS:-470} ./build-gpu/bin/rtpurbo-train \
    --recipe recipes/toy-pretrain.yaml ${V[$v]} --out_dir runs/sweep-$v > runs-$v.log 2>&1 &
  i=$((i + 1))
done
wait
best=""; best_acc=-1
for v in $(echo "${!V[@]}" | tr ' ' '\n' | sort); do
  acc=$(python3 -c "import json;print(json.load(open('runs/sweep-$v/model/rtpurbo_toy_task.json'))['final_toy_accuracy'])" 2>/dev/null || echo -1)
  echo "variant $v: final accuracy $acc  (${V[$v]})" | tee -a "$OUT/sweep.txt"
  grep -E "toy_acc" runs-$v.log | tail -6 >> "$OUT/sweep.txt"
  tail -2 runs-$v.log >> "$OUT/sweep.txt"
  { echo "=== variant $v: ${V[$v]}"; cat runs-$v.log; } >> "$OUT/pretrain-all.log"
  if python3 -c "import sys;sys.exit(0 if float('$acc')>float('$best_acc') else 1)"; then best=$v; best_acc=$acc; fi
done
echo "best: $best ($best_acc)" | tee -a "$OUT/sweep.txt"
[ -n "$best" ] && cp runs/sweep-$best/model/{config.json,model.safetensors,rtpurbo_toy_task.json,train_recipe.yaml} "$OUT/model/"
cat "$OUT/sweep.txt"
