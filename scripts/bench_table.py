#!/usr/bin/env python3
"""Side-by-side table of the crate's criterion benches and PyTorch's, from one run of each.

    scripts/bench_side_by_side.sh            # runs both, then this script
    python3 scripts/bench_table.py BENCH_OUT.txt TORCH.jsonl

BENCH_OUT.txt is `cargo bench` stdout (criterion's "name / time: [lo mid hi]" lines);
TORCH.jsonl is scripts/bench_pytorch.py output. Prints a markdown table with ratios (PyTorch / ours).

    python3 scripts/bench_table.py --conv-layers BENCH_OUT.txt TORCH.jsonl

the per-layer table of ResNet-18's convolutions on CUDA: benches/resnet.rs's resnet18_layers_cuda (fp32, tf32x3,
tf32, bf16) beside bench_pytorch.py --only conv_layers (cuDNN at fp32 and tf32, and under bf16 autocast).
"""
import json
import re
import sys

UNIT = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_criterion(path):
    out, name = {}, None
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip()
        m = re.match(r"^(\S.*?)\s*(time:\s*\[.*\])?$", line)
        t = re.search(r"time:\s*\[\s*([\d.]+)\s*(\S+)\s+([\d.]+)\s*(\S+)\s+([\d.]+)\s*(\S+)\s*\]", line)
        if t:
            if name is None and m and m.group(1) and not m.group(1).startswith("time:"):
                name = m.group(1)
            out[name] = float(t.group(3)) * UNIT[t.group(4)]
            name = None
        elif line and not line.startswith((" ", "Benchmarking", "Found", "Warning", "change", "thrpt", "error", "Gnuplot")):
            name = line.strip()
    return out


def loss_cases(head, infonce, v3):
    """The loss rows as (label, our fused bench, our variant bench or None, PyTorch's case): the MoCo head (`head`
    fwd+bwd) at each K, then the MoCo v3 loss at each N. `infonce(K)` and `v3(N)` name our two benches."""
    return [(f"{head} fwd+bwd, K={k}", *infonce(k), f"moco_head_fwd_bwd/{k}") for k in (4096, 65536, 1048576)] + [
        (f"MoCo v3 loss fwd+bwd, N={n}", *v3(n), f"moco_v3_loss_fwd_bwd/{n}") for n in (1024, 4096)
    ]


def cpu(group, variant):
    """Our CPU benches of `group` at K or N: cpu_fused and cpu_`variant`."""
    return lambda x: (f"{group}/cpu_fused/{x}", f"{group}/cpu_{variant}/{x}")


def conv_layers(ours, torch_rows):
    """One row per layer and pass: ours at each precision, cuDNN at fp32, tf32 and bf16, and the like-for-like ratios."""
    cudnn = {r["name"].split("/", 1)[1]: r["median_ms"] for r in torch_rows if r["name"].startswith("conv_layer/")}
    layers = []
    for key in cudnn:
        base = key.rsplit("_", 1)[0]
        if base not in layers:
            layers.append(base)
    fmt = lambda v: f"{v:.3f}" if v is not None else "n/a"
    ratio = lambda t, o: f"{t / o:.2f}x" if t and o else "n/a"
    print("| layer, pass (batch 64) | moco fp32 (ms) | moco tf32x3 (ms) | moco tf32 (ms) | moco bf16 (ms) | cuDNN fp32 (ms) | cuDNN tf32 (ms) | cuDNN bf16 (ms) | cuDNN / moco, fp32 | cuDNN tf32 / moco tf32x3 | cuDNN / moco, tf32 | cuDNN / moco, bf16 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for base in layers:
        m = {p: ours.get(f"resnet18_layers_cuda_b64/{base}_{p}") for p in ("fp32", "tf32x3", "tf32", "bf16")}
        t = {p: cudnn.get(f"{base}_{p}") for p in ("fp32", "tf32", "bf16")}
        print(f"| {base} | {fmt(m['fp32'])} | {fmt(m['tf32x3'])} | {fmt(m['tf32'])} | {fmt(m['bf16'])} | {fmt(t['fp32'])} | {fmt(t['tf32'])} | {fmt(t['bf16'])} | {ratio(t['fp32'], m['fp32'])} | {ratio(t['tf32'], m['tf32x3'])} | {ratio(t['tf32'], m['tf32'])} | {ratio(t['bf16'], m['bf16'])} |")


def main():
    cuda = "--cuda" in sys.argv
    if "--conv-layers" in sys.argv:
        args = [a for a in sys.argv[1:] if a != "--conv-layers"]
        conv_layers(parse_criterion(args[0]), [json.loads(l) for l in open(args[1]) if l.strip().startswith("{")])
        return
    args = [a for a in sys.argv[1:] if a != "--cuda"]
    ours = parse_criterion(args[0])
    torch = [json.loads(l) for l in open(args[1]) if l.strip().startswith("{")]
    tmap = {}
    for r in torch:
        p = r["params"]
        key = r["name"]
        if "K" in p:
            key += f"/{p['K']}"
        elif "N" in p and "v3" in key:
            key += f"/{p['N']}"
        tmap[key] = r["median_ms"]
    pairs = loss_cases("MoCo head", cpu("infonce_fwd_bwd", "unfused"), cpu("moco_v3_loss_fwd_bwd", "unfused")) + [
        ("EMA ResNet-50 vs official loop", "ema_resnet50/cpu_fused_flat", "ema_resnet50/cpu_unfused_official_loop", "ema_official_loop"),
        ("EMA ResNet-50 vs _foreach_lerp_", "ema_resnet50/cpu_fused_multi_tensor", "ema_resnet50/cpu_unfused_official_loop", "ema_foreach_lerp"),
        ("EMA ResNet-50 vs flat lerp_", "ema_resnet50/cpu_fused_flat", "ema_resnet50/cpu_unfused_official_loop", "ema_flat_lerp"),
    ]
    if cuda:
        infonce = lambda k: (f"cuda/infonce_fused_f32/{k}", f"cuda/infonce_fused_bf16/{k}")
        # at Precision::Half (tensor cores): an f32 queue (rounded to bf16 by the call) and a bf16 queue
        half = [(f"MoCo head fwd+bwd at Half, f32 queue, K={k}", f"cuda/infonce_fused_f32_half/{k}", f"cuda/infonce_fused_bf16_half/{k}", f"moco_head_fwd_bwd/{k}") for k in (4096, 65536, 1048576)]
        # an f32 queue on the TF32 tensor cores: Tf32x3 (f32's accuracy), with Tf32 as the variant
        half += [(f"MoCo head fwd+bwd at Tf32x3 (variant Tf32), f32 queue, K={k}", f"cuda/infonce_fused_f32_tf32x3/{k}", f"cuda/infonce_fused_f32_tf32/{k}", f"moco_head_fwd_bwd/{k}") for k in (4096, 65536, 1048576)]
        pairs = loss_cases("MoCo head", infonce, lambda n: (f"cuda/moco_v3_fused/{n}", None)) + half + [
            ("EMA ResNet-50 vs official loop", "cuda/ema_flat_resnet50", "cuda/ema_multi_tensor_resnet50", "ema_official_loop"),
            ("EMA ResNet-50 vs _foreach_lerp_", "cuda/ema_multi_tensor_resnet50", None, "ema_foreach_lerp"),
            ("EMA ResNet-50 vs flat lerp_", "cuda/ema_flat_resnet50", None, "ema_flat_lerp"),
        ]
        print("| case (GPU) | moco fused (ms) | moco variant (bf16 queue / multi-tensor) (ms) | variant / fused | PyTorch (ms) | PyTorch / moco fused |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, f, u, t in pairs:
            fv, uv, tv = ours.get(f), ours.get(u) if u else None, tmap.get(t)
            fmt = lambda v: f"{v:.3f}" if v is not None else "n/a"
            print(f"| {label} | {fmt(fv)} | {fmt(uv)} | {f'{uv / fv:.2f}' if fv and uv else 'n/a'} | {fmt(tv)} | {f'{tv / fv:.2f}x' if fv and tv else 'n/a'} |")
        return
    print("| case | moco fused (ms) | moco unfused (ms) | fused speed-up | PyTorch (ms) | PyTorch / moco fused |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, f, u, t in pairs:
        fv, uv, tv = ours.get(f), ours.get(u), tmap.get(t)
        fmt = lambda v: f"{v:.2f}" if v is not None else "n/a"
        su = f"{uv / fv:.2f}x" if fv and uv else "n/a"
        ratio = f"{tv / fv:.2f}x" if fv and tv else "n/a"
        print(f"| {label} | {fmt(fv)} | {fmt(uv)} | {su} | {fmt(tv)} | {ratio} |")
    floors = loss_cases("InfoNCE", cpu("infonce_fwd_bwd", "gemm_floor"), cpu("moco_v3_loss_fwd_bwd", "gemm_floor"))
    rows = [(label, ours.get(f), ours.get(g), tmap.get(t)) for label, f, g, t in floors]
    rows = [r for r in rows if r[1] is not None and r[2] is not None]
    if rows:
        print()
        print("| loss | moco fused (ms) | PyTorch (ms) | PyTorch / moco | GEMM floor (ms) | moco / floor |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, fv, gv, tv in rows:
            tv_s = f"{tv:.2f}" if tv is not None else "n/a"
            ratio = f"{tv / fv:.2f}x" if tv is not None else "n/a"
            print(f"| {label} | {fv:.2f} | {tv_s} | {ratio} | {gv:.2f} | {fv / gv:.2f}x |")


if __name__ == "__main__":
    main()
