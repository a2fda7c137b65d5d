#!/usr/bin/env bash
# The MoCo v3 ViT step on the CPU: this crate (criterion, benches/vit.rs) and PyTorch (scripts/bench_pytorch.py
# --only mocov3_vit, the same model in plain torch: scripts/mocov3_torch_reference.py) back to back, then this crate
# again, so that a drift of the shared machine shows. Prints the three figures and the ratio.
# Needs a Python with torch (TORCH_PYTHON, default /opt/torchvenv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${TORCH_PYTHON:-/opt/torchvenv/bin/python}"
OUT="${BENCH_OUT:-target/bench-vit}"
mkdir -p "$OUT"
cargo bench --bench vit --no-run >/dev/null 2>&1
bench() { cargo bench --bench vit -- mocov3_vit_step 2>/dev/null | grep -A2 "mocov3_vit_step_b64/cpu" | tee -a "$OUT/moco.txt"; }
: > "$OUT/moco.txt"
bench
"$PY" scripts/bench_pytorch.py --threads "${THREADS:-2}" --only mocov3_vit --img 32 --patch 4 --dim 192 --depth 4 --heads 3 --mlp-dim 512 --out-dim 128 --batch 64 | tee "$OUT/torch.jsonl"
bench
python3 - "$OUT/moco.txt" "$OUT/torch.jsonl" <<'PY'
import json, re, sys
ours = []
for line in open(sys.argv[1]):
    m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", line)
    if m:
        v, u = float(m.group(1)), m.group(2)
        ours.append(v * {"s": 1e3, "ms": 1.0, "µs": 1e-3}[u])
torch = [json.loads(l)["median_ms"] for l in open(sys.argv[2]) if l.startswith("{")]
print(f"moco (criterion median, before / after): {' / '.join(f'{o:.0f} ms' for o in ours)}")
print(f"PyTorch (median): {torch[0]:.0f} ms")
print(f"ratio PyTorch / moco: {torch[0] / (sum(ours) / len(ours)):.2f}x")
PY
