#!/usr/bin/env bash
# The crate beside the official colab's training step in PyTorch, on the embedded digits, with the same flags
# (the settings of the embedded default, for more epochs), two seeds each; then one plot of both kNN curves.
#
#   scripts/side_by_side_digits.sh [PYTHON] [EPOCHS]
#
# PYTHON: a Python with torch, torchvision, numpy and matplotlib (default: python3). Writes runs/side_by_side/.
set -euo pipefail
PY=${1:-python3}
EPOCHS=${2:-12}
OUT=runs/side_by_side
FLAGS="--image-size 8 --epochs $EPOCHS --batch 64 --queue 512 --bn-splits 2 --crop-min 0.5 --no-flip --cosine-from-zero"
mkdir -p "$OUT"
cargo build --release --example train_resnet18
BIN=target/release/examples/train_resnet18
"$BIN" --export-data "$OUT/digits-cifar"
for SEED in 0 1; do
    "$BIN" --backend cpu --data "$OUT/digits-cifar" $FLAGS --seed $SEED --out "$OUT/crate-s$SEED" --no-progress \
        | tee "$OUT/crate-s$SEED.log"
    "$PY" scripts/moco_torch_reference.py --data "$OUT/digits-cifar" $FLAGS --seed $SEED --out "$OUT/torch-s$SEED.jsonl" \
        | tee "$OUT/torch-s$SEED.log"
done
"$PY" scripts/plot_side_by_side.py "$OUT" --out docs/side_by_side_digits.png
