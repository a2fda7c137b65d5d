"""Loads an exported MoCo v3 ViT backbone (safetensors, timm's names, no head) into timm's VisionTransformer with
`load_state_dict(strict=True)`, runs a features file through it in eval mode and compares.

    backbone: cls_token [1,1,D], pos_embed [1,T,D], patch_embed.proj.{weight [D,3,p,p], bias}, blocks.N.{norm1,
              attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight,bias}, norm.{weight,bias}
    features: {"x": [n,3,H,W], "features": [n,D]} (the exporter's cls features of x, eval mode)

D, patch, depth, T (hence img = patch * sqrt(T - 1)) and the MLP ratio are read from the tensors; the head count
is not in any shape: it comes from the backbone's safetensors metadata "num_heads" or from --heads. Prints the max
abs difference of timm's cls features from "features" and exits 1 above --tol (1e-4).

Needs timm (not installed by this script):
    /tmp/torchvenv-lead/bin/pip install timm
    /tmp/torchvenv-lead/bin/python scripts/check_vit_export.py BACKBONE.safetensors FEATURES.safetensors [--heads H]
Writing a test pair from scripts/mocov3_torch_reference.py's model (0 training steps):
    /tmp/torchvenv-lead/bin/python scripts/mocov3_torch_reference.py --export /tmp/vit_b.safetensors \\
        --features /tmp/vit_f.safetensors --heads 4
"""
import argparse
import math
import re
import sys
from functools import partial

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

try:
    import timm
    from timm.models.vision_transformer import VisionTransformer
except ImportError:
    sys.exit("timm is not installed: /tmp/torchvenv-lead/bin/pip install timm")


def build(sd, heads):
    d = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    tokens = sd["pos_embed"].shape[1]
    grid = math.isqrt(tokens - 1)
    assert grid * grid == tokens - 1, f"pos_embed has {tokens} tokens: not 1 + a square grid"
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    assert hidden % d == 0, f"fc1 {hidden} is not a multiple of D {d}"
    assert d % heads == 0, f"D {d} is not a multiple of {heads} heads"
    cfg = dict(img_size=grid * patch, patch_size=patch, embed_dim=d, depth=depth, num_heads=heads,
               mlp_ratio=hidden // d)
    print(f"timm {timm.__version__}, torch {torch.__version__}: VisionTransformer({cfg})")
    m = VisionTransformer(**cfg, qkv_bias=True, num_classes=0, global_pool="token", class_token=True,
                          norm_layer=partial(nn.LayerNorm, eps=1e-6))
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("backbone")
    ap.add_argument("features", nargs="?", help="safetensors {x, features}; without it: load and run only")
    ap.add_argument("--heads", type=int, default=None, help="head count (default: metadata num_heads)")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    sd = load_file(args.backbone)
    with safe_open(args.backbone, "pt") as f:
        meta = f.metadata() or {}
    heads = args.heads or int(meta.get("num_heads", 0))
    if not heads:
        sys.exit("head count unknown: pass --heads (or write metadata num_heads in the export)")
    m = build(sd, heads)
    print("load_state_dict(strict=True):", m.load_state_dict(sd, strict=True))
    m.eval()
    if args.features is None:
        with torch.no_grad():
            f = m(torch.randn(2, 3, m.patch_embed.img_size[0], m.patch_embed.img_size[1]))
        ok = bool(torch.isfinite(f).all())
        print(f"features {tuple(f.shape)}, finite {ok}")
        sys.exit(0 if ok else 1)
    ft = load_file(args.features)
    x, want = ft["x"].float(), ft["features"].float()
    with torch.no_grad():
        tokens = m.forward_features(x)  # [n, T, D], after the final norm
        got = tokens[:, 0]
        assert torch.equal(got, m(x)), "forward (num_classes=0, token pool) differs from forward_features[:, 0]"
    assert got.shape == want.shape, f"timm features {tuple(got.shape)}, file {tuple(want.shape)}"
    err = (got - want).abs().max().item()
    print(f"features {tuple(got.shape)}: max |timm - file| = {err:.3e} (max |file| {want.abs().max().item():.3e}), "
          f"tol {args.tol:.0e}: {'OK' if err <= args.tol else 'FAIL'}")
    sys.exit(0 if err <= args.tol else 1)


if __name__ == "__main__":
    main()
