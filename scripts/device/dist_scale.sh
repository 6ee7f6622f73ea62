#!/usr/bin/env bash
# Issue 5 on a machine with 4 GPUs, in phases (each fits one device call; the build stays between calls):
#   PHASE=toy  the toy indexer stage on 1, 2 and 4 GPUs (torchrun, NCCL): strong scaling at a global batch of 16
#              and weak scaling at 16 sequences per GPU; then a 4-rank run with rank 2 killed mid-run.
#   PHASE=30b  the indexer stage on the full-size Qwen3-30B-A3B architecture (random bf16 weights) at 32K tokens:
#              1 GPU x 1 sequence, 4 GPUs x 1 sequence (20 steps), 4 GPUs x 2 sequences.
# Usage there: source .devdeps/prelude.sh; PHASE=toy HEADS=heads/heads.h5 OUT=$OUT bash scripts/device/dist_scale.sh
set -uo pipefail
OUT=${OUT:-out/device}
mkdir -p "$OUT"
if [ ! -x build-gpu/bin/rtpurbo-train ] || [ -n "${REBUILD:-}" ]; then
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a \
    -DRTPURBO_BUILD_TESTS=OFF > "$OUT/cmake.log" 2>&1 || { tail -20 "$OUT/cmake.log"; exit 1; }
  ninja -C build-gpu -j"$(nproc)" rtpurbo-train > "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" -A3 "$OUT/build.log" | head -30; exit 1; }
fi
BIN=./build-gpu/bin/rtpurbo-train
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv | tee "$OUT/gpus.txt"
run() {  # run NAME NPROC ARGS...: one training run, its log under $OUT/NAME.log
  local name=$1 n=$2; shift 2
  local t0=$(date +%s)
  if [ "$n" = 1 ]; then timeout "${RUN_LIMIT:-240}" $BIN "$@" --out_dir "runs/$name" > "$OUT/$name.log" 2>&1
  else timeout "${RUN_LIMIT:-240}" torchrun --no-python --standalone --nproc-per-node "$n" $BIN "$@" --out_dir "runs/$name" > "$OUT/$name.log" 2>&1
  fi
  echo "$name: rc $? in $(( $(date +%s) - t0 )) s; $(grep 'indexer step' "$OUT/$name.log" | tail -1)"
}
if [ "${PHASE:-toy}" = toy ]; then
  TOY="--recipe recipes/toy-indexer.yaml --model_dir data/toy-model --heads_file ${HEADS:-heads/heads.h5} --device cuda
    --steps ${STEPS:-60} --save_every 0 --log_every 10 --eval_samples 1"
  run toy-g1-b16 1 $TOY --batch_size 16
  run toy-g2-b16 2 $TOY --batch_size 16
  run toy-g4-b16 4 $TOY --batch_size 16
  run toy-g2-b32 2 $TOY --batch_size 32
  run toy-g4-b64 4 $TOY --batch_size 64
  python3 - <<'PY' | tee "$OUT/compare.txt"
from safetensors.torch import load_file
a = load_file("runs/toy-g1-b16/indexer.safetensors")
for other in ("toy-g2-b16", "toy-g4-b16"):
    b = load_file(f"runs/{other}/indexer.safetensors")
    d = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    print(f"max |indexer(1 GPU) - indexer({other})| = {d:.3e}")
PY
  # A rank killed mid-run: the job must end (not hang) and say which rank.
  start=$(date +%s)
  timeout 120 torchrun --no-python --standalone --nproc-per-node 4 $BIN $TOY --batch_size 16 --steps 100000 \
    --dist_timeout_s 30 --out_dir runs/killed > "$OUT/killed.log" 2>&1 &
  sleep 20
  # torchrun starts the ranks as the bare binary (--no-python); the third one started is killed.
  victim=$(pgrep -f "^\./build-gpu/bin/rtpurbo-train .*runs/killed" | sort -n | sed -n 3p)
  echo "killing pid $victim (the 3rd rank process) at $(( $(date +%s) - start )) s" | tee -a "$OUT/killed.log"
  kill -9 "$victim"
  wait
  echo "job ended $(( $(date +%s) - start )) s after start" | tee -a "$OUT/killed.log"
  grep -E "error|Root Cause|rank|exitcode" "$OUT/killed.log" | tail -8
else
  BIG="--recipe recipes/qwen3-30b-a3b-scale.yaml"
  run q30b-g4-b4 4 $BIG --batch_size 4 --steps ${STEPS30:-20}
  run q30b-g1-b1 1 $BIG --batch_size 1 --steps 4
  run q30b-g4-b8 4 $BIG --batch_size 8 --steps 4
  run q30b-g1-b2 1 $BIG --batch_size 2 --steps 3
  grep -h -E "frozen model|retrieval heads|held-out|error" "$OUT"/q30b-*.log | sort | uniq -c
fi
