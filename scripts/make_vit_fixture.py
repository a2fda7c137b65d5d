"""MoCo v3 ViT fixture (tests/fixtures/vit_mocov3.safetensors): one training step's forwards and backward of
scripts/mocov3_torch_reference.py's `MoCoViT` (moco-v3's `MoCo_ViT` + `VisionTransformerMoCo`, --stop-grad-conv1).

Config: img 32, patch 8 (4x4 grid, T = 17 tokens), D 64, heads 4 (head dim 16), depth 2, mlp_ratio 4 (fc1 256),
mlp_dim 96, dim (out) 32, batch 4, temperature 0.2. Stored as "config" [9] f32 = [img, patch, D, heads, depth,
mlp_dim, dim, batch, T].

Weights and inputs are not stored: `fill(name, shape, scale, shift)` = (uniform(name, n) * scale + shift) computed
in f64 then rounded to f32, with uniform(name, n)[i] = 2 * ((splitmix64(fnv1a64(name) + i) >> 11) * 2^-53) - 1
(the generator of scripts/make_resnet_fixture.py, `moco::nn::layout::name_uniform` in Rust), row-major over shape.
NAME is the parameter's state-dict name in the base encoder (timm's backbone names + the projector's "head.*":
"cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "head.0.weight", "head.1.weight", ...) and
"predictor.*" for the predictor ("predictor.0.weight", ...). The rules:
  - every Linear / Conv2d weight [out, in(, kh, kw)]: fill(NAME, shape, 1/sqrt(fan_in)), fan_in = in * kh * kw
    (patch_embed.proj.weight: 1/sqrt(192); qkv: 1/sqrt(64); fc2: 1/sqrt(256); head.0: 1/sqrt(64); head.3, head.6,
    predictor.3: 1/sqrt(96); predictor.0: 1/sqrt(32))
  - every Linear / Conv2d bias: fill(NAME, shape, 0.1)
  - every LayerNorm / BatchNorm1d weight: fill(NAME, shape, 0.1, 1.0); bias: fill(NAME, shape, 0.1)
    (head.7 and predictor.4 are BatchNorm1d(affine=False): no weight, no bias)
  - cls_token [1, 1, 64]: fill("cls_token", shape, 0.02)
  - pos_embed: moco-v3's fixed sin-cos table, computed in f32 (stored as "pos_embed" [17, 64]): row 0 (cls) zero,
    row 1 + r*4 + c (patch at grid row r, column c) = [sin(r w), cos(r w), sin(c w), cos(c w)], w_d = 10000^(-d/16)
  - inputs: x1 = fill("x1", [4, 3, 32, 32], 1.0), x2 = fill("x2", [4, 3, 32, 32], 1.0)
  - the momentum encoder's parameters = the base encoder's (moco-v3's init); its momentum update is run with m = 1
    (the first step's update leaves it equal to the base encoder; m = 1 makes that exact in f32)
  - BN running stats start at mean 0, var 1 (momentum 0.1, eps 1e-5; running_var uses the unbiased batch variance)

The step, all modules in train mode: q1 = predictor(head(base(x1))), q2 = predictor(head(base(x2))), then under
no_grad k1 = momentum(x1), k2 = momentum(x2); loss = ctr(q1, k2) + ctr(q2, k1), ctr(q, k) =
CE(normalize(q) @ normalize(k).T / T, arange(4)) * 2T; loss.backward(). No optimizer step.

Stored (f32):
  - "q1", "q2", "k1", "k2" [4, 32], "loss" [1]
  - for every trainable parameter P of the base encoder (backbone + head; patch_embed.proj and pos_embed are frozen,
    so absent) and of the predictor ("predictor.*"): "grad/P" (flattened) when it has <= 4096 elements, else
    "gradsum/P" = [sum, sum of squares, dot with the +-1 pattern (+1 at even flat index, -1 at odd), first 16
    elements] (19 values), as in the ResNet fixture
  - "running_mean/M", "running_var/M" for the query side's BNs M in head.1, head.4, head.7, predictor.1,
    predictor.4 after the step: each went through two train-mode forwards, x1 then x2 (so mean = 0.09 m1 + 0.1 m2).
    The momentum encoder's head BNs saw the same two forwards with the same weights, so their stats are the same.
  - "feat_eval" [4, 64]: the backbone's cls feature of x1 in eval mode (the backbone has no BN: same as train mode)
  - "proj_eval" [4, 32]: head(base(x1)) in eval mode, with the running stats after the step
  - "pos_embed" [17, 64]

f32 vs f64 (the same f32-rounded weights and inputs, the step run in float64, pos_embed computed in f64), printed
as max |f32 - f64| / max |f64| per tensor, worst of each group (torch 2.15 CPU, 2 threads):
  q/k 6.7e-5 (q2; k1 8e-6), loss 5.4e-6, grads 2.1e-4 (predictor.3.weight; all others 6e-5..1.1e-4), running stats
  3.3e-6, feat_eval 2.7e-7, proj_eval 9.9e-7, pos_embed 4.8e-8; gradsum: |d sum| and |d alt-sum| <= 6.5e-7 of
  sqrt(n * sumsq), |d sumsq| / sumsq 1.4e-4. Each train-mode BN over batch 4 amplifies the relative error ~3-10x
  (backbone feature 1.9e-7 -> head output 2.2e-5 -> predictor output 6.6e-5), so q and the grads carry ~1e-4.
  Two tensors are zero in exact arithmetic and hold only rounding noise: compare them with an absolute tolerance:
  grad/norm.bias (max |f32| 2.9e-6 against grads of order 1: head.0 is bias-free and followed by BN, which cancels any
  per-feature constant) and running_mean/predictor.1 (max |f32| 2e-8: the predictor's input is the output of
  BN(affine=False), zero batch mean, through a bias-free Linear).

    /tmp/torchvenv-lead/bin/python scripts/make_vit_fixture.py    # writes tests/fixtures/vit_mocov3.safetensors
"""
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from make_resnet_fixture import fill  # noqa: E402
from mocov3_torch_reference import MoCoViT, init_weights, sincos_pos_embed  # noqa: E402

CFG = dict(img=32, patch=8, dim=64, heads=4, depth=2, mlp_dim=96, out_dim=32, batch=4, T=0.2)


def trainable(model):
    out = [(n, p) for n, p in model.base_encoder.named_parameters() if p.requires_grad]
    return out + [("predictor." + n, p) for n, p in model.predictor.named_parameters()]


def batchnorms(model):
    out = [(n, m) for n, m in model.base_encoder.named_modules() if isinstance(m, nn.BatchNorm1d)]
    return out + [("predictor." + n, m) for n, m in model.predictor.named_modules() if isinstance(m, nn.BatchNorm1d)]


def run(dtype):
    """One step in `dtype` from the f32-rounded weights and inputs; returns {name: tensor} with full gradients."""
    c = CFG
    torch.manual_seed(0)
    model = MoCoViT(T=c["T"], mlp_dim=c["mlp_dim"], out_dim=c["out_dim"], img=c["img"], patch=c["patch"], dim=c["dim"],
                    depth=c["depth"], heads=c["heads"], stop_grad_conv1=True)
    init_weights(model)
    model = model.to(dtype).train()
    g = c["img"] // c["patch"]
    with torch.no_grad():  # f64: the table computed in f64 (f32: moco-v3's f32 table, as built)
        pos = sincos_pos_embed(g, g, c["dim"], dtype=dtype)[None]
        model.base_encoder.pos_embed.copy_(pos)
        model.momentum_encoder.pos_embed.copy_(pos)
    shape = [c["batch"], 3, c["img"], c["img"]]
    x1, x2 = fill("x1", shape, 1.0).to(dtype), fill("x2", shape, 1.0).to(dtype)
    loss, q1, q2, k1, k2 = model(x1, x2, 1.0, return_qk=True)
    loss.backward()
    out = {"q1": q1.detach(), "q2": q2.detach(), "k1": k1, "k2": k2, "loss": loss.detach().reshape(1)}
    for name, p in trainable(model):
        out["grad/" + name] = p.grad.detach().reshape(-1).clone()
    for name, m in batchnorms(model):
        out["running_mean/" + name] = m.running_mean.clone()
        out["running_var/" + name] = m.running_var.clone()
    # the momentum encoder's BNs saw the same forwards: same stats
    for (name, mb), (_, mm) in zip(batchnorms(model), [(n, m) for n, m in model.momentum_encoder.named_modules()
                                                        if isinstance(m, nn.BatchNorm1d)]):
        assert torch.allclose(mb.running_mean, mm.running_mean) and torch.allclose(mb.running_var, mm.running_var), name
    model.eval()
    with torch.no_grad():
        out["feat_eval"] = model.base_encoder.forward_features(x1)
        out["proj_eval"] = model.base_encoder(x1)
    out["pos_embed"] = model.base_encoder.pos_embed.detach()[0].clone()
    return out


def summarise(g):
    g = g.to(torch.float64)
    sign = torch.where(torch.arange(g.numel()) % 2 == 0, 1.0, -1.0).to(torch.float64)
    return torch.cat([torch.stack([g.sum(), (g * g).sum(), (g * sign).sum()]), g[:16]])


def main():
    torch.set_num_threads(2)
    f32, f64 = run(torch.float32), run(torch.float64)

    groups, zeros = {}, []
    for k in f32:
        a, b = f32[k].to(torch.float64), f64[k]
        if b.abs().max() < 1e-12:  # zero in exact arithmetic: only rounding noise in f32
            zeros.append(f"{k} (max |f32| {a.abs().max().item():.1e}, max |f64| {b.abs().max().item():.1e})")
            continue
        rel = ((a - b).abs().max() / b.abs().max()).item()
        group = k.split("/")[0] if "/" in k else ("q/k" if k[0] in "qk" else k)
        group = "running stats" if group.startswith("running") else group
        groups.setdefault(group, []).append((rel, k))
    print("f32 vs f64, max |f32 - f64| / max |f64|:")
    for group, rels in groups.items():
        rels.sort(reverse=True)
        print(f"  {group:14s} {rels[0][0]:.2e} (worst {rels[0][1]}; next {[f'{r:.1e}' for r, _ in rels[1:4]]})")
    worst = [0.0, 0.0, 0.0]
    for k in f32:
        if k.startswith("grad/") and f32[k].numel() > 4096:
            a, b = summarise(f32[k]), summarise(f64[k])
            spread = (b[1] * f64[k].numel()).sqrt()  # sqrt(n * sum of squares): the scale of a sum of n entries
            worst = [max(worst[0], ((a[0] - b[0]).abs() / spread).item()),
                     max(worst[1], ((a[2] - b[2]).abs() / spread).item()),
                     max(worst[2], ((a[1] - b[1]).abs() / b[1]).item())]
    print(f"  gradsum        |d sum| / sqrt(n sumsq) {worst[0]:.2e}, |d alt-sum| / sqrt(n sumsq) {worst[1]:.2e}, "
          f"|d sumsq| / sumsq {worst[2]:.2e}")
    print("zero in exact arithmetic (compare with an absolute tolerance):\n  " + "\n  ".join(zeros))

    c = CFG
    out = {"config": torch.tensor([c["img"], c["patch"], c["dim"], c["heads"], c["depth"], c["mlp_dim"], c["out_dim"],
                                   c["batch"], c["T"]], dtype=torch.float32)}
    for k, v in f32.items():
        if k.startswith("grad/") and v.numel() > 4096:
            out["gradsum/" + k[5:]] = summarise(v).to(torch.float32)
        else:
            out[k] = v.to(torch.float32)
    path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "vit_mocov3.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path)
    print(f"wrote {path}: {len(out)} tensors, {os.path.getsize(path)} bytes, loss {f32['loss'].item():.6f}")


if __name__ == "__main__":
    main()
