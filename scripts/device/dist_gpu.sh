#!/usr/bin/env bash
# On a machine with 2+ GPUs: the toy indexer stage on one GPU and data-parallel on two over c10d NCCL (torchrun),
# the two final indexers compared (same global batch: they must agree to fp tolerance), tokens/s from the logs,
# then a 2-rank run with one rank killed mid-run, to show the job ends and what it prints.
# Usage there: source .devdeps/prelude.sh; HEADS=path/heads.h5 OUT=$OUT bash scripts/device/dist_gpu.sh
set -uo pipefail
OUT=${OUT:-out/device}
mkdir -p "$OUT"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0a > "$OUT/cmake.log" 2>&1 || exit 1
grep -E "NCCL|Gloo|gloo" "$OUT/cmake.log"
ninja -C build-gpu -j"$(nproc)" rtpurbo-train > "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" -A3 "$OUT/build.log" | head -30; exit 1; }
rm -f "$OUT/build.log"
BIN=./build-gpu/bin/rtpurbo-train
COMMON="--recipe recipes/toy-indexer.yaml --model_dir data/toy-model --heads_file ${HEADS:-heads/heads.h5} --device cuda
  --batch_size 16 --steps ${STEPS:-60} --save_every 0 --log_every 10"
$BIN $COMMON --out_dir runs/d1 > "$OUT/one-gpu.log" 2>&1; echo "1 GPU: rc $?"
torchrun --no-python --standalone --nproc-per-node 2 $BIN $COMMON --out_dir runs/d2 > "$OUT/two-gpu.log" 2>&1
echo "2 GPUs: rc $?"
python3 - <<'PY' | tee "$OUT/compare.txt"
from safetensors.torch import load_file
a = load_file("runs/d1/indexer.safetensors"); b = load_file("runs/d2/indexer.safetensors")
assert a.keys() == b.keys(), (a.keys(), b.keys())
d = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
s = max(a[k].float().abs().max().item() for k in a)
print(f"indexer tensors {len(a)}: max |1 GPU - 2 GPUs| = {d:.3e} (max |w| {s:.3f})")
PY
grep -E "tok/s|tokens/s" "$OUT/one-gpu.log" | tail -2; grep -E "tok/s|tokens/s" "$OUT/two-gpu.log" | tail -2
# A rank killed mid-run: the job must end (not hang) and say which rank.
start=$(date +%s)
torchrun --no-python --standalone --nproc-per-node 2 $BIN $COMMON --steps 100000 --dist_timeout_s 30 \
  --out_dir runs/dk > "$OUT/killed.log" 2>&1 &
sleep 25
victim=$(pgrep -f "out_dir runs/dk" | grep -v "^$$\$" | tail -1)
echo "killing pid $victim at $(( $(date +%s) - start )) s" | tee -a "$OUT/killed.log"
kill -9 "$victim"
wait
echo "job ended $(( $(date +%s) - start )) s after start, rc $?" | tee -a "$OUT/killed.log"
tail -8 "$OUT/killed.log"
