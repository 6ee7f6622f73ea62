#!/usr/bin/env bash
# On the GPU machine: pretrain toy-model variants in two phases and bring back the most accurate one.
#   phase 1: short, copy-dense sequences (random-token spans a third of the tokens): the induction circuit that
#            answers queries forms where attention is spread over few keys and the copy signal is dense;
#   phase 2: the trained length (1024) starting from phase 1's model.
# Variants are recipe overrides ("phase-1 overrides | phase-2 overrides") of recipes/toy-pretrain-short.yaml and
# recipes/toy-pretrain.yaml; several share a GPU (a 4M-parameter model leaves it mostly idle), spread over all
# visible GPUs. Returns $OUT/sweep.txt, $OUT/pretrain-all.log.gz and $OUT/best-model.tar (the model directory).
# Usage there: source .devdeps/prelude.sh; [VARIANTS="a b"] [SECONDS_PER_VARIANT=N] bash scripts/device/toy_two_phase.sh
set -uo pipefail
OUT=${OUT:-out/device}
mkdir -p "$OUT" runs
if [ ! -x build-gpu/bin/rtpurbo-train ]; then
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a > runs/cmake.log 2>&1 || { tail -20 runs/cmake.log; exit 1; }
  ninja -C build-gpu -j"$(nproc)" rtpurbo-train > runs/build.log 2>&1 || { grep -E "error|FAILED" -A3 runs/build.log | head -30; exit 1; }
fi
NGPU=$(nvidia-smi -L | wc -l)
declare -A V
# Sweep 2 (2026-11-28): phase 1 with a constant learning rate and more steps; HF-script-like data (one long span
# of uniform tokens in a uniform haystack) against the recipe's; lr 1e-3 and 2e-3.
C="--min_lr_ratio 1"
H="--toy_markov_branching 0 --toy_spans 1 --toy_needles 4 --toy_queries 4 --answer_loss_weight 1"
V[a]="$C --steps 4000|"
V[b]="$C --steps 4000 --lr 2e-3|"
V[c]="$C --steps 4000 $H --toy_span_len 96|"
V[d]="$C --steps 4000 $H --toy_span_len 96 --lr 2e-3|"
V[e]="$C --steps 5000 $H --toy_span_len 64 --seq_len 160 --toy_needles 1 --toy_queries 1|"
V[f]="$C --steps 5000 $H --toy_span_len 64 --seq_len 160 --toy_needles 1 --toy_queries 1 --lr 2e-3|"
for v in "${!V[@]}"; do [[ " ${VARIANTS:-a b c d e f} " == *" $v "* ]] || unset "V[$v]"; done
run_variant() {  # name, gpu
  local v=$1 gpu=$2 p1=${V[$1]%%|*} p2=${V[$1]#*|}
  # Step counts that end inside the call (a run killed by timeout leaves no model): 3 runs per H200.
  [[ "$p1" == *--steps* ]] || p1="--steps ${PHASE1_STEPS:-1500} $p1"
  [[ "$p2" == *--steps* ]] || p2="--steps ${PHASE2_STEPS:-1200} --min_lr_ratio ${PHASE2_MIN_LR:-0.3} $p2"
  local t0=$(date +%s)
  CUDA_VISIBLE_DEVICES=$gpu timeout ${PHASE1_SECONDS:-150} ./build-gpu/bin/rtpurbo-train \
    --recipe recipes/toy-pretrain-short.yaml $p1 --out_dir runs/$v-1 > runs/$v.log 2>&1
  echo "=== phase 2 after $(( $(date +%s) - t0 )) s" >> runs/$v.log
  CUDA_VISIBLE_DEVICES=$gpu timeout $(( ${SECONDS_PER_VARIANT:-420} - ($(date +%s) - t0) )) ./build-gpu/bin/rtpurbo-train \
    --recipe recipes/toy-pretrain.yaml --model_dir runs/$v-1/model $p2 --out_dir runs/$v-2 >> runs/$v.log 2>&1
}
i=0
for v in $(echo "${!V[@]}" | tr ' ' '\n' | sort); do
  run_variant "$v" $((i % NGPU)) &
  i=$((i + 1))
done
wait
best=""; best_acc=-1
for v in $(echo "${!V[@]}" | tr ' ' '\n' | sort); do
  acc=$(python3 -c "import json;print(json.load(open('runs/$v-2/model/rtpurbo_toy_task.json'))['final_toy_accuracy'])" 2>/dev/null || echo -1)
  echo "variant $v: final accuracy $acc  (${V[$v]})" | tee -a "$OUT/sweep.txt"
  grep -E "toy_acc|phase 2" runs/$v.log | tail -8 >> "$OUT/sweep.txt"
  { echo "=== variant $v: ${V[$v]}"; cat runs/$v.log; } >> runs/pretrain-all.log
  if python3 -c "import sys;sys.exit(0 if float('$acc')>float('$best_acc') else 1)"; then best=$v; best_acc=$acc; fi
done
echo "best: $best ($best_acc)" | tee -a "$OUT/sweep.txt"
gzip -c runs/pretrain-all.log > "$OUT/pretrain-all.log.gz"
[ -n "$best" ] && tar -cf "$OUT/best-model.tar" -C runs/$best-2 model
cat "$OUT/sweep.txt"
