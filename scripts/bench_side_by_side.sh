#!/usr/bin/env bash
# Runs the crate's criterion benches and PyTorch's equivalents back to back on this machine and prints the
# side-by-side table used in BENCHMARKS.md. Arguments filter the criterion benches; TORCH_ONLY filters PyTorch's. Needs a Python with torch (TORCH_PYTHON, default /opt/torchvenv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${TORCH_PYTHON:-/opt/torchvenv/bin/python}"
OUT="${BENCH_OUT:-target/bench-side-by-side}"
mkdir -p "$OUT"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/moco-xdg-runtime}"; mkdir -p "$XDG_RUNTIME_DIR"
cargo bench --bench contrastive -- "$@" 2>/dev/null | tee "$OUT/moco.txt"
"$PY" scripts/bench_pytorch.py ${TORCH_ONLY:+--only "$TORCH_ONLY"} | tee "$OUT/torch.jsonl"
python3 scripts/bench_table.py "$OUT/moco.txt" "$OUT/torch.jsonl" | tee "$OUT/table.md"
