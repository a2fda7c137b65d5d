"""PyTorch's side of the tensor-core comparison (issue 23), on one CUDA GPU: the official InfoNCE (F.normalize,
einsum, cat, / T, F.cross_entropy, backward to q) at N=256, C=128, K = 4096, 65536 and 1,048,576, and moco-v3's
symmetric loss at N = 1024 and 4096, C = 256 and 128 (the widest the tensor-core pass holds), each in fp32 (PyTorch's default), with allow_tf32, and under bf16
autocast; and torch.matmul in bf16 on the loss's two GEMMs (q̂ queueᵀ and P queue), the measured tensor-core floor.
CUDA events around REPS steps after a warm-up; the median of 5 such runs. One markdown row per case.

    python3 scripts/bench_torch_losses.py          # scripts/device_bench.sh runs it on a lent GPU
"""

import statistics

import torch
import torch.nn.functional as F

REPS = 20


def timed(fn):
    for _ in range(3):
        fn()
    runs = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(REPS):
            fn()
        end.record()
        torch.cuda.synchronize()
        runs.append(start.elapsed_time(end) / REPS)
    return statistics.median(runs)


def infonce_step(q, k, queue, T=0.2):
    q.grad = None
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    l_pos = torch.einsum("nc,nc->n", [qn, kn]).unsqueeze(-1)
    l_neg = torch.einsum("nc,kc->nk", [qn, queue])
    logits = torch.cat([l_pos, l_neg], dim=1) / T
    F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device)).backward()


def v3_step(q1, q2, k1, k2, T=0.2):
    q1.grad, q2.grad = None, None

    def ctr(q, k):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = torch.einsum("nc,mc->nm", [q, k]) / T
        return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device)) * (2 * T)

    (ctr(q1, k2) + ctr(q2, k1)).backward()


def modes(step):
    def fp32():
        torch.backends.cuda.matmul.allow_tf32 = False
        step()

    def tf32():
        torch.backends.cuda.matmul.allow_tf32 = True
        step()
        torch.backends.cuda.matmul.allow_tf32 = False

    def bf16():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step()

    return [("fp32", fp32), ("allow_tf32", tf32), ("bf16 autocast", bf16)]


def main():
    dev = torch.device("cuda")
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(dev)}; ms per step (median of 5 x {REPS})")
    print("| case | PyTorch mode | ms |")
    print("|---|---|---:|")
    g = torch.Generator(device=dev).manual_seed(0)
    n, c = 256, 128
    for kk in [4096, 65536, 1_048_576]:
        q = torch.randn(n, c, device=dev, generator=g, requires_grad=True)
        k = torch.randn(n, c, device=dev, generator=g)
        queue = F.normalize(torch.randn(kk, c, device=dev, generator=g), dim=1)
        for name, fn in modes(lambda: infonce_step(q, k, queue)):
            print(f"| InfoNCE N={n} C={c} K={kk} fwd+bwd | {name} | {timed(fn):.3f} |")
        qb, qu, p = q.detach().bfloat16(), queue.bfloat16(), torch.rand(n, kk, device=dev, generator=g).bfloat16()
        print(f"| the two GEMMs (q̂ queueᵀ, P queue) K={kk} | torch.matmul bf16 | {timed(lambda: (qb @ qu.t(), p @ qu)):.3f} |")
        del queue, qu, p
    for c3 in [256, 128]:
        for n3 in [1024, 4096]:
            q1, q2 = (torch.randn(n3, c3, device=dev, generator=g, requires_grad=True) for _ in range(2))
            k1, k2 = (torch.randn(n3, c3, device=dev, generator=g) for _ in range(2))
            for name, fn in modes(lambda: v3_step(q1, q2, k1, k2)):
                print(f"| v3 loss N={n3} C={c3} fwd+bwd | {name} | {timed(fn):.3f} |")


if __name__ == "__main__":
    main()
