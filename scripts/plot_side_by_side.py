"""One plot of the kNN top-1 curves of the crate (runs/side_by_side/crate-s*/metrics.jsonl) and of the colab's code in
PyTorch (runs/side_by_side/torch-s*.jsonl), and a Markdown table of both, per epoch.

    python3 scripts/plot_side_by_side.py runs/side_by_side --out docs/side_by_side_digits.png
"""
import argparse
import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def knn_curve(path):
    pts = {}
    for line in open(path):
        r = json.loads(line)
        if r.get("kind", "epoch") == "epoch" and r.get("knn_top1") is not None:
            pts[int(r["epoch"])] = float(r["knn_top1"])
    return sorted(pts.items())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    runs = []
    for p in sorted(glob.glob(os.path.join(a.dir, "crate-s*", "metrics.jsonl"))):
        runs.append(("moco crate (Rust, CPU)", p.split(os.sep)[-2].split("-s")[-1], knn_curve(p), "tab:blue"))
    for p in sorted(glob.glob(os.path.join(a.dir, "torch-s*.jsonl"))):
        runs.append(("colab code (PyTorch, CPU)", os.path.basename(p)[len("torch-s"):-len(".jsonl")], knn_curve(p), "tab:orange"))
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    styles = {"0": "-", "1": "--"}
    for name, seed, pts, color in runs:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, styles.get(seed, ":"), color=color, marker="o", ms=3, label=f"{name}, seed {seed}")
    ax.set_xlabel("epoch (0 = random init, before training)")
    ax.set_ylabel("kNN top-1 on the test split (%)")
    ax.set_title("MoCo on the embedded digits (8x8): crate vs the colab's PyTorch code, same flags")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(a.out)
    print(f"wrote {a.out}")
    epochs = sorted({e for _, _, pts, _ in runs for e, _ in pts})
    print("| run | " + " | ".join(str(e) for e in epochs) + " |")
    print("|---|" + "---|" * len(epochs))
    for name, seed, pts, _ in runs:
        d = dict(pts)
        print(f"| {name}, seed {seed} | " + " | ".join(f"{d[e]:.1f}" if e in d else "" for e in epochs) + " |")


if __name__ == "__main__":
    main()
