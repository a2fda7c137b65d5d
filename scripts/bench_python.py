"""Fused InfoNCE forward + backward from Python against the official formulation (F.normalize, einsum, cat, / T,
F.cross_entropy, autograd), in one process: the two alternate, each timed REPS times after a warm-up, and the
medians are compared. Prints one markdown table row per shape.

    python scripts/bench_python.py                  # CPU tensors: N=256, C=128, K=65536 (the issue's shape), 4096
    python scripts/bench_python.py --device cuda    # CUDA tensors, PyTorch eager on the same GPU (scripts/device_bench.sh)

On CUDA each timed step is bracketed by torch.cuda.synchronize(), so it is the GPU time of the whole fwd+bwd
(with its launches), both sides alike.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import moco_torch


def official(q, k, queue_kc, T):
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    l_pos = torch.einsum("nc,nc->n", [qn, kn]).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", [qn, queue_kc.t()])
    logits = torch.cat([l_pos, l_neg], dim=1) / T
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def step(fn, q, k, queue, T):
    q.grad = None
    cuda = q.is_cuda
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn(q, k, queue, T).backward()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def fused(q, k, queue, T):
    return moco_torch.infonce(q, k, queue, T).loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("reps", nargs="?", type=int, default=15)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    reps, dev = args.reps, torch.device(args.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {where}, moco_torch {moco_torch.__version__}; median of {reps} alternating fwd+bwd")
    print("| N, C, K | official (ms) | moco_torch (ms) | speed-up |")
    print("|---|---:|---:|---:|")
    for n, c, kk in [(256, 128, 65536), (256, 128, 4096)]:
        g = torch.Generator().manual_seed(0)
        q = torch.randn(n, c, generator=g).to(dev).requires_grad_()
        k = torch.randn(n, c, generator=g).to(dev)
        queue = F.normalize(torch.randn(kk, c, generator=g), dim=1).to(dev)
        # the same numbers first (the tests check this in detail)
        a, b = official(q, k, queue, 0.2).item(), fused(q, k, queue, 0.2).item()
        assert abs(a - b) <= 1e-5 * abs(a), (a, b)
        for fn in (official, fused):
            step(fn, q, k, queue, 0.2)
        times = {official: [], fused: []}
        for _ in range(reps):
            for fn in (official, fused):
                times[fn].append(step(fn, q, k, queue, 0.2))
        to, tf = statistics.median(times[official]), statistics.median(times[fused])
        print(f"| {n}, {c}, {kk} | {1e3 * to:.1f} | {1e3 * tf:.1f} | {to / tf:.2f}x |")


if __name__ == "__main__":
    main()
