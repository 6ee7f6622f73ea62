#!/usr/bin/env bash
# On the GPU machine: the whole conversion and the RULER evaluation on a real Qwen3 architecture and the real Qwen3
# tokenizer, without real weights (none can be downloaded): a Qwen3-0.6B-shaped model with random bf16 weights made by
# Hugging Face transformers, then identify heads (text calibration) -> train the indexer on documents (this
# repository's own sources as data: files) -> export -> rtpurbo-eval --task ruler, dense and sparse, at 4K and 32K.
# Random weights answer nothing, so the scores are 0: what this measures is that every step runs at this scale and
# what it costs (prefill and decode times, KV bytes per layer, attended fraction). Results in $OUT.
# Usage there: source .devdeps/prelude.sh; bash scripts/device/ruler_random_qwen3.sh
set -euo pipefail
OUT=${OUT:-out/device}
mkdir -p "$OUT"
W=${WORK:-/tmp/rq}
rm -rf "$W" && mkdir -p "$W"
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a -DRTPURBO_BUILD_TESTS=OFF > /tmp/cmake.log 2>&1 || { tail -20 /tmp/cmake.log; exit 1; }
ninja -C build-gpu -j16 rtpurbo-identify-heads rtpurbo-train rtpurbo-export rtpurbo-eval > /tmp/build.log 2>&1 || { grep -E "error|FAILED" -A3 /tmp/build.log | head -30; exit 1; }
echo "built after $(( $(date +%s) - start )) s"
python3 scripts/device/make_random_qwen3.py "$W/model"  # Qwen3-0.6B architecture, random bf16 weights
find README.md docs kernels lib tools tests -type f \( -name '*.md' -o -name '*.cpp' -o -name '*.h' -o -name '*.cu' \) | sort |
  python3 -c "
import sys, json
with open('$W/docs.jsonl', 'w') as f:
    for p in sys.stdin:
        f.write(json.dumps({'text': open(p.strip(), encoding='utf-8').read()}) + '\n')"
cat README.md docs/*.md kernels/NOTES.md > "$W/calibration.txt"
echo "== identify heads"
build-gpu/bin/rtpurbo-identify-heads --model "$W/model" --out "$W/heads.h5" --calibration text --text "$W/calibration.txt" --seq-len 4096 \
  --num-sequences 4 --window 2048 --retrieval-fraction 0.15 --device cuda --dtype bfloat16 2>&1 | tail -4
echo "== train the indexer on documents"
build-gpu/bin/rtpurbo-train --recipe recipes/toy-indexer.yaml --model_dir "$W/model" --heads_file "$W/heads.h5" \
  --data files --data_files "$W/docs.jsonl" --seq_len 4096 --batch_size 4 --steps 30 --log_every 10 --save_every 0 \
  --window 2048 --top_p 0.9 --dtype bfloat16 --device cuda --out_dir "$W/indexer" 2>&1 | tee "$OUT/ruler-random-train.log" | tail -6
echo "== export"
build-gpu/bin/rtpurbo-export --model "$W/model" --heads "$W/heads.h5" --indexer "$W/indexer/indexer.safetensors" \
  --window 2048 --out "$W/converted" 2>&1 | tail -3
echo "== RULER, dense and sparse"
build-gpu/bin/rtpurbo-eval --task ruler --model "$W/converted" \
  --tasks ruler:niah_single_1,ruler:niah_multikey_1,ruler:vt --lengths 4096,32768 --samples 2 --both \
  --essay "$W/calibration.txt" \
  --device cuda --dtype bfloat16 --out-dir "$W/ruler" 2>&1 | tee "$OUT/ruler-random-eval.log" | tail -30
cp "$W/ruler/ruler.json" "$OUT/ruler-random-qwen3.json"
cp "$W/ruler/report.html" "$OUT/ruler-random-qwen3-report.html"
echo "done after $(( $(date +%s) - start )) s"
