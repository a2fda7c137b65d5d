#!/usr/bin/env python3
"""Benchmark the PyTorch reference implementations of the MoCo kernels.

Prints one JSON object per line to stdout, with fields:
  name, params (dict), median_ms, min_ms, iters, torch_version, device, threads

Cases (math identical to facebookresearch/moco and moco-v3 builder.py):
  moco_head_fwd_bwd     MoCo v1/v2 head: normalize q,k; l_pos/l_neg einsums against a
                        [C, K] queue; cat; /T; CrossEntropyLoss; backward to q.
                        N=256, C=128, T=0.2, K in {4096, 65536, 1048576}.
  moco_v3_loss_fwd_bwd  ctr(q1, k2) + ctr(q2, k1), forward + backward to q1, q2.
                        N in {1024, 4096}, C=256, T=0.2.
  ema_official_loop     official per-parameter momentum update over
                        torchvision resnet50() parameters (25.6M), m=0.999.
  ema_foreach_lerp      torch._foreach_lerp_(k_params, q_params, 1 - m).
  ema_flat_lerp         k_flat.lerp_(q_flat, 1 - m) on one flat 25.6M tensor.
  resnet18_cifar_fwd_bwd, moco_v2_step_b{N}_k4096: see their docstrings.
  conv_layer            (only with --only conv_layers) ResNet-18's (CIFAR stem) convolutions at batch 64, one by
                        one: forward, and backward (input and weight gradients) through autograd, with
                        cudnn.allow_tf32 off (fp32) and on (tf32, PyTorch's default), and under bf16 autocast
                        (bf16); named as benches/resnet.rs's resnet18_layers_cuda, e.g.
                        conv3x3s1_64to64_32x32_fwd_fp32.
  mocov3_vit_step       (only with --only mocov3_vit) one moco-v3 main_moco.py training step of
                        scripts/mocov3_torch_reference.py's MoCoViT: both views through base encoder +
                        predictor, momentum update + keys, symmetric loss, AdamW. Shape flags
                        --img --patch --dim --depth --heads --mlp-dim --out-dim --batch.

Usage (from the repository root):
    /opt/torchvenv/bin/python scripts/bench_pytorch.py [--device cpu|cuda] [--quick]
                                                       [--only SUBSTR] [--threads N]
    /tmp/torchvenv-lead/bin/python scripts/bench_pytorch.py --only mocov3_vit --img 32 --patch 4 --dim 192 \
        --depth 4 --heads 3 --mlp-dim 512 --out-dim 128 --batch 64
--quick uses fewer iterations and skips K=1048576. The default CPU run takes a
few minutes on a 2-core machine.
"""

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mocov3_torch_reference import MoCoViT, add_vit_args  # noqa: E402


def skip(only, name):
    """True when --only (comma-separated substrings) names none of this case."""
    return bool(only) and not any(o in name for o in only.split(","))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device, iters, warmup):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


# "_torch_tf32_defaults" when --cuda-tf32 defaults (PyTorch's own TF32 defaults instead of fp32 everywhere), then
# "_autocast_bf16" when --autocast bf16
NAME_SUFFIX = ""
# --autocast bf16: the training steps' forward passes and losses under torch.autocast(dtype=torch.bfloat16), as
# moco-v3's main_moco.py trains (its GradScaler does nothing in bf16); the backward and the optimiser outside it
AUTOCAST = False


def autocast(device):
    """The steps' forward context: bf16 autocast with --autocast bf16, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=AUTOCAST)


def emit(name, params, times, device):
    rec = {
        "name": name + NAME_SUFFIX,
        "params": params,
        "median_ms": round(statistics.median(times), 4),
        "min_ms": round(min(times), 4),
        "iters": len(times),
        "torch_version": torch.__version__,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(rec), flush=True)


# ---------------------------------------------------------------- MoCo v2 head
def bench_moco_head(device, quick, only):
    name = "moco_head_fwd_bwd"
    if skip(only, name):
        return
    n, c, t = 256, 128, 0.2
    ks = [4096, 65536] if quick else [4096, 65536, 1048576]
    criterion = nn.CrossEntropyLoss()
    for k_len in ks:
        g = torch.Generator(device="cpu").manual_seed(0)
        q = torch.randn(n, c, generator=g).to(device).requires_grad_(True)
        k = torch.randn(n, c, generator=g).to(device)
        queue = F.normalize(torch.randn(c, k_len, generator=g), dim=0).to(device)
        labels = torch.zeros(n, dtype=torch.long, device=device)

        def step():
            q.grad = None
            qn = F.normalize(q, dim=1)
            kn = F.normalize(k, dim=1)
            l_pos = torch.einsum("nc,nc->n", [qn, kn]).unsqueeze(-1)
            l_neg = torch.einsum("nc,ck->nk", [qn, queue])
            logits = torch.cat([l_pos, l_neg], dim=1)
            logits /= t
            loss = criterion(logits, labels)
            loss.backward()

        if k_len >= 1 << 20:
            iters, warmup = (5, 1)
        elif k_len >= 1 << 16:
            iters, warmup = (5, 1) if quick else (15, 2)
        else:
            iters, warmup = (10, 2) if quick else (50, 5)
        times = time_fn(step, device, iters, warmup)
        emit(name, {"N": n, "C": c, "K": k_len, "T": t}, times, device)
        del q, k, queue, labels


# ---------------------------------------------------------------- MoCo v3 loss
def bench_moco_v3(device, quick, only):
    name = "moco_v3_loss_fwd_bwd"
    if skip(only, name):
        return
    c, t = 256, 0.2
    criterion = nn.CrossEntropyLoss()

    def ctr(q, k):
        q = F.normalize(q, dim=1)
        k = F.normalize(k, dim=1)
        logits = torch.einsum("nc,mc->nm", [q, k]) / t
        labels = torch.arange(logits.shape[0], dtype=torch.long, device=device)
        return criterion(logits, labels) * (2 * t)

    for n in [1024, 4096]:
        g = torch.Generator(device="cpu").manual_seed(0)
        q1 = torch.randn(n, c, generator=g).to(device).requires_grad_(True)
        q2 = torch.randn(n, c, generator=g).to(device).requires_grad_(True)
        k1 = torch.randn(n, c, generator=g).to(device)
        k2 = torch.randn(n, c, generator=g).to(device)

        def step():
            q1.grad = None
            q2.grad = None
            loss = ctr(q1, k2) + ctr(q2, k1)
            loss.backward()

        if n >= 4096:
            iters, warmup = (5, 1) if quick else (10, 2)
        else:
            iters, warmup = (10, 2) if quick else (30, 3)
        times = time_fn(step, device, iters, warmup)
        emit(name, {"N": n, "C": c, "T": t}, times, device)


# ---------------------------------------------------------------- EMA
def bench_ema(device, quick, only):
    names = ["ema_official_loop", "ema_foreach_lerp", "ema_flat_lerp"]
    if only and not any(only in nm for nm in names):
        return
    import torchvision

    m = 0.999
    torch.manual_seed(0)
    encoder_q = torchvision.models.resnet50().to(device)
    encoder_k = copy.deepcopy(encoder_q)
    # make q and k differ, as they would during training
    with torch.no_grad():
        for p in encoder_q.parameters():
            p.add_(torch.randn_like(p), alpha=0.01)
    list_q = [p.data for p in encoder_q.parameters()]
    list_k = [p.data for p in encoder_k.parameters()]
    numel = sum(p.numel() for p in list_q)
    params = {"params": numel, "tensors": len(list_q), "m": m, "model": "resnet50"}
    iters, warmup = (10, 2) if quick else (30, 3)

    if not only or only in "ema_official_loop":

        @torch.no_grad()
        def official():
            for param_q, param_k in zip(encoder_q.parameters(), encoder_k.parameters()):
                param_k.data = param_k.data * m + param_q.data * (1.0 - m)

        emit("ema_official_loop", params, time_fn(official, device, iters, warmup), device)
        # the official loop rebinds .data; refresh the key list
        list_k = [p.data for p in encoder_k.parameters()]

    if not only or only in "ema_foreach_lerp":

        @torch.no_grad()
        def foreach():
            torch._foreach_lerp_(list_k, list_q, 1.0 - m)

        emit("ema_foreach_lerp", params, time_fn(foreach, device, iters, warmup), device)

    if not only or only in "ema_flat_lerp":
        q_flat = torch.cat([p.reshape(-1) for p in list_q])
        k_flat = torch.cat([p.reshape(-1) for p in list_k])
        del encoder_q, encoder_k, list_q, list_k

        @torch.no_grad()
        def flat():
            k_flat.lerp_(q_flat, 1.0 - m)

        emit("ema_flat_lerp", params, time_fn(flat, device, iters, warmup), device)


# ---------------------------------------------------------------- ResNet-18
def bench_resnet18(device, quick, only):
    """ResNet-18 with the CIFAR stem (conv 3x3/1, no maxpool), 10 classes, batch 64 at 32x32: forward + backward."""
    name = "resnet18_cifar_fwd_bwd"
    if skip(only, name):
        return
    import torch.nn as nn
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    m = m.to(device).train()
    x = torch.randn(64, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    crit = nn.CrossEntropyLoss()

    def step():
        m.zero_grad(set_to_none=False)
        crit(m(x), y).backward()

    iters, warmup = (3, 1) if quick else (10, 2)
    emit(name, {"N": 64, "H": 32, "W": 32, "classes": 10}, time_fn(step, device, iters, warmup), device)


def bench_moco_v2_step(device, quick, only, batch=64):
    """One MoCo v2 training step as facebookresearch/moco's CIFAR colab runs it (its SplitBatchNorm with 8 groups,
    the MLP head, the per-parameter momentum loop, cat + CE loss, SGD, enqueue): ResNet-18 CIFAR stem, batch `batch`,
    K=4096, dim 128, T=0.2. The same step as moco's `train::MocoEngine::step` (benches/resnet.rs, moco_v2_step;
    tests/cuda_train.rs times the CUDA engine at batch 64 and 256)."""
    name = f"moco_v2_step_b{batch}_k4096"
    if skip(only, name):
        return
    import copy
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision

    class SplitBatchNorm(nn.BatchNorm2d):
        def __init__(self, num_features, num_splits):
            super().__init__(num_features)
            self.num_splits = num_splits

        def forward(self, x):
            n, c, h, w = x.shape
            if self.training:
                rm = self.running_mean.repeat(self.num_splits)
                rv = self.running_var.repeat(self.num_splits)
                out = F.batch_norm(x.view(-1, c * self.num_splits, h, w), rm, rv, self.weight.repeat(self.num_splits),
                                   self.bias.repeat(self.num_splits), True, self.momentum, self.eps).view(n, c, h, w)
                self.running_mean.data.copy_(rm.view(self.num_splits, c).mean(dim=0))
                self.running_var.data.copy_(rv.view(self.num_splits, c).mean(dim=0))
                return out
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, self.momentum, self.eps)

    def encoder():
        m = torchvision.models.resnet18(num_classes=128, norm_layer=lambda c: SplitBatchNorm(c, 8))
        m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
        m.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), m.fc)
        return m.to(device)

    torch.manual_seed(0)
    enc_q = encoder()
    enc_k = copy.deepcopy(enc_q)
    for p in enc_k.parameters():
        p.requires_grad = False
    opt = torch.optim.SGD(enc_q.parameters(), lr=0.0075, momentum=0.9, weight_decay=5e-4)
    queue = F.normalize(torch.randn(128, 4096, device=device), dim=0)
    ptr = [0]
    x1, x2 = torch.randn(batch, 3, 32, 32, device=device), torch.randn(batch, 3, 32, 32, device=device)

    def step():
        with autocast(device):
            q = F.normalize(enc_q(x1), dim=1)
            with torch.no_grad():
                for pq, pk in zip(enc_q.parameters(), enc_k.parameters()):
                    pk.data = pk.data * 0.99 + pq.data * 0.01
                k = F.normalize(enc_k(x2), dim=1)
            l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
            l_neg = torch.einsum("nc,ck->nk", q, queue.clone().detach())
            logits = torch.cat([l_pos, l_neg], dim=1) / 0.2
            loss = F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            queue[:, ptr[0]:ptr[0] + batch] = k.t().float()
            ptr[0] = (ptr[0] + batch) % 4096

    iters, warmup = (3, 1) if quick else (10, 2)
    emit(name, {"N": batch, "K": 4096, "C": 128, "splits": 8}, time_fn(step, device, iters, warmup), device)


def bench_mocov3_vit_step(device, quick, only, args):
    """One MoCo v3 ViT training step as moco-v3's main_moco.py `train` runs it (fp32, one process):
    loss = model(x1, x2, m) (q1, q2 = predictor(base(x)), momentum update, k1, k2 = momentum(x) under no_grad,
    ctr(q1, k2) + ctr(q2, k1)), zero_grad, backward, AdamW step over model.parameters() (lr 1.5e-4 * batch / 256,
    wd 0.1, moco-v3's ViT recipe), m = 0.99, --stop-grad-conv1. Opt-in: runs only with --only mocov3_vit."""
    name = "mocov3_vit_step"
    if not only or only not in name:
        return
    torch.manual_seed(0)
    model = MoCoViT(T=0.2, mlp_dim=args.mlp_dim, out_dim=args.out_dim, img=args.img, patch=args.patch, dim=args.dim,
                    depth=args.depth, heads=args.heads, stop_grad_conv1=True).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4 * args.batch / 256, weight_decay=0.1)
    x1 = torch.randn(args.batch, 3, args.img, args.img, device=device)
    x2 = torch.randn(args.batch, 3, args.img, args.img, device=device)

    def step():
        with autocast(device):
            loss = model(x1, x2, 0.99)
        opt.zero_grad()
        loss.backward()
        opt.step()

    params = {"N": args.batch, "img": args.img, "patch": args.patch, "D": args.dim, "depth": args.depth,
              "heads": args.heads, "mlp_dim": args.mlp_dim, "out_dim": args.out_dim, "T": 0.2,
              "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    iters, warmup = (3, 1) if quick else (10, 2)
    emit(name, params, time_fn(step, device, iters, warmup), device)

# ---------------------------------------------------------------- ResNet-18's convolutions, one by one
# (C_in, H = W, C_out, kernel, stride, pad): benches/resnet.rs's LAYERS
CONV_LAYERS = [(3, 32, 64, 3, 1, 1), (64, 32, 64, 3, 1, 1), (64, 32, 128, 3, 2, 1), (128, 16, 256, 3, 2, 1), (256, 8, 512, 3, 2, 1),
               (128, 16, 128, 3, 1, 1), (256, 8, 256, 3, 1, 1), (512, 4, 512, 3, 1, 1), (256, 8, 512, 1, 2, 0)]


def bench_conv_layers(device, quick, only):
    """Opt-in (--only conv_layers): each layer's forward and backward (both gradients) at fp32 and tf32 cuDNN, and
    under bf16 autocast (the convolution in bf16, f32 accumulation; its gradients flow back to the f32 leaves)."""
    if not only or "conv_layers" not in only:
        return
    iters, warmup = (5, 2) if quick else (20, 5)
    g = torch.Generator().manual_seed(0)
    for (c_in, hw, c_out, k, st, p) in CONV_LAYERS:
        x = torch.rand(64, c_in, hw, hw, generator=g).mul_(2).sub_(1).to(device).requires_grad_(True)
        w = torch.rand(c_out, c_in, k, k, generator=g).mul_(2).sub_(1).to(device).requires_grad_(True)
        oh = (hw + 2 * p - k) // st + 1
        dy = torch.rand(64, c_out, oh, oh, generator=g).mul_(2).sub_(1).to(device)
        name = f"conv{k}x{k}s{st}_{c_in}to{c_out}_{hw}x{hw}"
        for prec in ("fp32", "tf32", "bf16"):
            torch.backends.cudnn.allow_tf32 = prec == "tf32"
            cast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == "bf16")

            def fwd():
                with cast:
                    return F.conv2d(x.detach(), w.detach(), stride=st, padding=p)

            with cast:
                out = F.conv2d(x, w, stride=st, padding=p)
            dy_out = dy.to(out.dtype)
            bwd = lambda: torch.autograd.grad(out, (x, w), dy_out, retain_graph=True)
            for pass_, fn in (("fwd", fwd), ("bwd", bwd)):
                params = {"layer": name, "pass": pass_, "precision": prec, "batch": 64}
                emit(f"conv_layer/{name}_{pass_}_{prec}", params, time_fn(fn, device, iters, warmup), device)
    torch.backends.cudnn.allow_tf32 = False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer iterations, skip K=1048576")
    ap.add_argument("--only", default=None, help="run only cases whose name contains SUBSTR (comma-separated: any of them)")
    ap.add_argument("--moco-batch", default="64", help="comma-separated batch sizes of moco_v2_step (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    vit = ap.add_argument_group("mocov3_vit_step (with --only mocov3_vit)")
    add_vit_args(vit, img=32, patch=4, dim=192, depth=4, heads=3)
    vit.add_argument("--mlp-dim", type=int, default=512)
    vit.add_argument("--out-dim", type=int, default=128)
    vit.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cuda-tf32", choices=["off", "defaults"], default="off",
                    help="off (default): fp32 everywhere (cudnn.allow_tf32 and cuda.matmul.allow_tf32 False); defaults: "
                         "PyTorch's own defaults (TF32 convolutions, fp32 matmuls), the names get _torch_tf32_defaults")
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off",
                    help="bf16: the moco_v2_step and mocov3_vit_step forwards and losses under bf16 autocast (the names "
                         "get _autocast_bf16)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda requested but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    if device.type == "cuda" and args.cuda_tf32 == "off":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    global NAME_SUFFIX, AUTOCAST
    if args.cuda_tf32 == "defaults":
        NAME_SUFFIX = "_torch_tf32_defaults"
    if args.autocast == "bf16":
        AUTOCAST = True
        NAME_SUFFIX += "_autocast_bf16"

    bench_moco_head(device, args.quick, args.only)
    bench_moco_v3(device, args.quick, args.only)
    bench_ema(device, args.quick, args.only)
    bench_resnet18(device, args.quick, args.only)
    for batch in [int(b) for b in args.moco_batch.split(",")]:
        bench_moco_v2_step(device, args.quick, args.only, batch)
    bench_mocov3_vit_step(device, args.quick, args.only, args)
    bench_conv_layers(device, args.quick, args.only)


if __name__ == "__main__":
    main()
