#!/usr/bin/env python3
"""The CPU steps and the fused InfoNCE against PyTorch, alternating in one run (issue 27's table).

For each case, R rounds of: this crate's criterion bench (the built bench binary, run directly), then PyTorch's
same computation (scripts/bench_pytorch.py --only ...), in alternating order (ours first in odd rounds, PyTorch
first in even ones), so that a drift of the shared machine hits both. Prints each measurement, then a markdown
table: median of the rounds per side, and PyTorch / ours (above 1: this crate is faster).

    cargo bench --bench vit --bench resnet --bench contrastive --no-run
    python3 scripts/bench_cpu_vs_pytorch.py --torch-python /tmp/pyvenv/bin/python [--rounds 2] [--only vit,resnet]

Threads: 2 on both sides (RAYON_NUM_THREADS and torch.set_num_threads through --threads).
"""
import argparse, json, os, re, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# case: (bench binary, criterion filter, bench_pytorch.py arguments, PyTorch record name, PyTorch params to match)
VIT_SHAPE = ["--img", "32", "--patch", "4", "--dim", "192", "--depth", "4", "--heads", "3", "--mlp-dim", "512", "--out-dim", "128", "--batch", "64"]
CASES = {
    "vit": ("vit", "mocov3_vit_step_b64/cpu$", ["--only", "mocov3_vit", *VIT_SHAPE], "mocov3_vit_step", {}),
    "resnet": ("resnet", "resnet18_cifar_b64/cpu_fwd_bwd$", ["--only", "resnet18_cifar_fwd_bwd"], "resnet18_cifar_fwd_bwd", {}),
    "moco_v2": ("resnet", "moco_v2_step_b64_k4096/cpu$", ["--only", "moco_v2_step"], "moco_v2_step_b64_k4096", {}),
    "infonce": ("contrastive", "infonce_fwd_bwd/cpu_fused/65536$", ["--only", "moco_head_fwd_bwd"], "moco_head_fwd_bwd", {"K": 65536}),
}
LABEL = {
    "vit": "MoCo v3 ViT step (D 192, depth 4, batch 64)",
    "resnet": "ResNet-18 CIFAR fwd+bwd (batch 64)",
    "moco_v2": "MoCo v2 step (ResNet-18, batch 64, K 4096)",
    "infonce": "fused InfoNCE fwd+bwd (N 256, C 128, K 65536)",
}


def bench_binary(name, cache={}):
    """The bench executable cargo built for benches/NAME.rs (asked from cargo: tests/NAME.rs builds a binary of the
    same prefix in target/release/deps)."""
    if name not in cache:
        out = subprocess.run(["cargo", "bench", "--bench", name, "--no-run", "--message-format=json"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        exes = [m["executable"] for m in map(json.loads, out.splitlines()) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name]
        if not exes:
            sys.exit(f"cargo built no bench executable for {name}")
        cache[name] = exes[-1]
    return cache[name]


def ours(bench, filt, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([bench_binary(bench), "--bench", "--warm-up-time", "2", "--measurement-time", "8", "--sample-size", "10", "--noplot", filt],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", out)
    if not m:
        sys.exit(f"no criterion time for {filt}:\n{out}")
    return float(m.group(1)) * {"s": 1e3, "ms": 1.0, "µs": 1e-3, "us": 1e-3}[m.group(2)]


def torch(py, args, name, params, threads):
    out = subprocess.run([py, os.path.join(ROOT, "scripts/bench_pytorch.py"), "--threads", str(threads), *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            if r["name"] == name and all(r["params"].get(k) == v for k, v in params.items()):
                return r["median_ms"], r.get("torch_version", "?")
    sys.exit(f"no PyTorch record {name} {params}:\n{out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--torch-python", default=sys.executable)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(CASES))
    a = ap.parse_args()
    rows, version = [], "?"
    for case in a.only.split(","):
        bench, filt, targs, tname, tparams = CASES[case]
        o, t = [], []
        for rnd in range(a.rounds):
            order = ["ours", "torch"] if rnd % 2 == 0 else ["torch", "ours"]
            for side in order:
                if side == "ours":
                    o.append(ours(bench, filt, a.threads))
                    print(f"{case} round {rnd + 1}: moco {o[-1]:.1f} ms", flush=True)
                else:
                    ms, version = torch(a.torch_python, targs, tname, tparams, a.threads)
                    t.append(ms)
                    print(f"{case} round {rnd + 1}: PyTorch {ms:.1f} ms", flush=True)
        rows.append((case, o, t))
    print(f"\n| {a.threads} threads, {a.rounds} rounds alternating | moco (ms) | PyTorch {version} (ms) | PyTorch / moco |")
    print("|---|---:|---:|---:|")
    for case, o, t in rows:
        mo, mt = statistics.median(o), statistics.median(t)
        print(f"| {LABEL[case]} | {mo:.1f} ({' / '.join(f'{v:.0f}' for v in o)}) | {mt:.1f} ({' / '.join(f'{v:.0f}' for v in t)}) | {mt / mo:.2f}x |")


if __name__ == "__main__":
    main()
