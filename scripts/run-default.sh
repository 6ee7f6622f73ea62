#!/usr/bin/env bash
# The main job on the shipped default. Until the toy model lands this is a smoke run of the model:
# HF-parity logits of the tiny Qwen3-MoE fixture through rtpurbo-eval.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
OUT=${OUT_DIR:-out/default}
mkdir -p "$OUT"
fx=data/fixtures/models/qwen3-moe-tiny
"$BUILD_DIR/bin/rtpurbo-eval" --task logits --model "$fx" --input "$fx/reference.safetensors" --out "$OUT/logits.safetensors"
echo "default run: logits written to $OUT/logits.safetensors"
