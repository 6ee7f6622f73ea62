#!/usr/bin/env bash
# The main job on the shipped default: convert the toy model (data/toy-model) end to end on this machine's CPU.
#   1. identify retrieval heads            -> out/default/heads.h5 (+ heads.svg)
#   2. train the indexer (stage 1)         -> out/default/indexer/indexer.safetensors
#   3. the random-heads baseline indexer   -> out/default/indexer-random/indexer.safetensors
#   4. export the converted model          -> out/default/converted/
#   5. evaluate dense vs sparse vs random  -> out/default/eval/eval.json + report.html
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BUILD_DIR:-build}/bin
# RECIPE: the indexer stage's recipe (its selection settings go into the converted model); another recipe than the
# default writes to out/<recipe name> unless OUT_DIR says otherwise.
RECIPE=${RECIPE:-recipes/toy-indexer.yaml}
if [[ "$RECIPE" == recipes/toy-indexer.yaml ]]; then OUT=${OUT_DIR:-out/default}; else OUT=${OUT_DIR:-out/$(basename "$RECIPE" .yaml)}; fi
[[ -f "$RECIPE" ]] || { echo "run-default.sh: recipe $RECIPE not found (set RECIPE to a recipe file, e.g. recipes/toy-indexer-topp09.yaml)" >&2; exit 2; }
MODEL=${MODEL_DIR:-data/toy-model}
DEVICE=${DEVICE:-cpu}
SAMPLES=${SAMPLES:-64}
mkdir -p "$OUT"
start=$(date +%s)
echo "== 1/5 identify heads ($MODEL)"
"$BIN/rtpurbo-identify-heads" --model "$MODEL" --out "$OUT/heads.h5" --calibration toy --retrieval-fraction 0.15 \
  --seq-len 1024 --window 96 --num-sequences 8 --device "$DEVICE"
echo "== 2/5 train the indexer ($RECIPE)"
"$BIN/rtpurbo-train" --recipe "$RECIPE" --model_dir "$MODEL" --heads_file "$OUT/heads.h5" \
  --out_dir "$OUT/indexer" --device "$DEVICE"
echo "== 3/5 train the random-heads baseline indexer (same count, same budget)"
"$BIN/rtpurbo-train" --recipe "$RECIPE" --model_dir "$MODEL" --heads_file "$OUT/heads.h5" \
  --heads_random --out_dir "$OUT/indexer-random" --device "$DEVICE"
echo "== 4/5 export"
"$BIN/rtpurbo-export" --model "$MODEL" --heads "$OUT/heads.h5" --indexer "$OUT/indexer/indexer.safetensors" \
  --out "$OUT/converted"
echo "== 5/5 evaluate"
EVAL=("$BIN/rtpurbo-eval" --task toy --model "$OUT/converted" --samples "$SAMPLES" --lengths 768,1024
  --random-heads-indexer "$OUT/indexer-random/indexer.safetensors" --out-dir "$OUT/eval" --device "$DEVICE")
if [[ -f "$OUT/eval/eval.progress.json" ]]; then
  # An evaluation this script left unfinished (interrupted) continues where it stopped, if the steps above re-made the
  # same model (on a CPU they do; GPU training need not be bit-reproducible): else it starts afresh.
  if ! "${EVAL[@]}" --resume 2>&1 | tee "$OUT/eval.resume.log"; then
    grep -q "these settings differ" "$OUT/eval.resume.log" || exit 1
    echo "run-default.sh: the unfinished evaluation in $OUT/eval measured another model; evaluating afresh"
    rm -f "$OUT/eval/eval.progress.json"
    "${EVAL[@]}"
  fi
else
  "${EVAL[@]}"
fi
echo "default run: $(( $(date +%s) - start )) s; eval.json and report.html in $OUT/eval"
