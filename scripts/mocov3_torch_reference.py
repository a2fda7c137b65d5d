"""MoCo v3's ViT (facebookresearch/moco-v3 `vits.py`, `moco/builder.py`) in plain torch, without timm.

Backbone = `VisionTransformerMoCo` as moco-v3 builds it on timm's `VisionTransformer`:
  - patch_embed.proj: Conv2d(3, D, p, stride p, bias=True); tokens = flatten of its [B, D, gh, gw] output (row-major)
  - cls_token [1, 1, D] prepended; pos_embed [1, 1 + gh*gw, D] added: a fixed 2-D sin-cos table
    (`build_2d_sincos_position_embedding`, not trained, zero row for cls)
  - depth x Block: x += attn(norm1(x)); x += mlp(norm2(x)); LayerNorm eps 1e-6, attention with qkv bias,
    scale hd^-0.5, proj; mlp fc1 (mlp_ratio 4) -> exact-erf GELU -> fc2
  - final norm (eps 1e-6); feature = the cls token
  - `head` = moco-v3's `_build_mlp(3, D, mlp_dim, dim)`: the projector lives inside the base encoder, as in `MoCo_ViT`
The backbone's state-dict names are timm's (cls_token, pos_embed, patch_embed.proj.*, blocks.N.{norm1,attn.qkv,
attn.proj,norm2,mlp.fc1,mlp.fc2}.*, norm.*): `backbone_state_dict` loads strict into timm's VisionTransformer
(scripts/check_vit_export.py checks it).

`MoCoViT` = moco-v3's `MoCo_ViT` on one process: predictor `_build_mlp(2, dim, mlp_dim, dim)` (last BN affine=False
too), symmetric loss ctr(q1, k2) + ctr(q2, k1), ctr = CE(normalize(q) @ normalize(k).T / T, arange(N)) * 2T,
momentum update of the parameters (not the BN buffers) before the keys. `stop_grad_conv1` freezes patch_embed.proj
as moco-v3's `--stop-grad-conv1`. Checked against moco-v3's own vits.py + builder.py (run on timm 1.0.31 with three
import/attribute shims, not committed): pos_embed bit-equal, same state-dict keys and requires_grad, and in float64
one step's loss, every gradient and every state tensor after it agree to 2.5e-12.

Used by scripts/make_vit_fixture.py and scripts/bench_pytorch.py (--only mocov3_vit_step). Run as a script, it
writes a backbone + features pair for scripts/check_vit_export.py (0 training steps):

    /tmp/torchvenv-lead/bin/python scripts/mocov3_torch_reference.py --export /tmp/vit_b.safetensors \\
        --features /tmp/vit_f.safetensors [--img 32 --patch 8 --dim 64 --depth 2 --heads 4 --init fill|mocov3]
"""
import argparse
import copy
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos_pos_embed(grid_h, grid_w, dim, temperature=10000.0, dtype=torch.float32):
    """moco-v3's `build_2d_sincos_position_embedding`, line for line: [1 + gh*gw, dim], row 0 (cls) zero.

    With ω_d = temperature^(-d / (dim/4)), d < dim/4, and patch row m of the flattened meshgrid
    (`meshgrid(arange(w), arange(h))`, 'ij', so a = m // h, b = m % h; for a square grid and timm's row-major
    tokens, a = token row, b = token column): [sin(a ω), cos(a ω), sin(b ω), cos(b ω)].
    moco-v3 computes it in float32; `dtype` exists for the float64 check only."""
    assert dim % 4 == 0, "embed dim must be divisible by 4 for the 2-D sin-cos position embedding"
    grid_w = torch.arange(grid_w, dtype=dtype)
    grid_h = torch.arange(grid_h, dtype=dtype)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
    pos_dim = dim // 4
    omega = torch.arange(pos_dim, dtype=dtype) / pos_dim
    omega = 1.0 / (temperature**omega)
    out_w = torch.einsum("m,d->md", [grid_w.flatten(), omega])
    out_h = torch.einsum("m,d->md", [grid_h.flatten(), omega])
    pos = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=dtype), pos], dim=0)


class PatchEmbed(nn.Module):
    def __init__(self, img, patch, dim):
        super().__init__()
        self.grid_size = (img // patch, img // patch)
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, gh, gw] -> [B, gh*gw, D]


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # [3, B, H, T, hd]
        q, k, v = qkv.unbind(0)
        att = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, H, T, T]
        x = (att @ v).transpose(1, 2).reshape(b, t, c)  # [B, T, H, hd] -> [B, T, D]
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
    """moco-v3's `MoCo._build_mlp`: (Linear no bias, BN1d, ReLU) x (num_layers - 1), Linear, BN1d(affine=False)."""
    mlp = []
    for l in range(num_layers):
        dim1 = input_dim if l == 0 else mlp_dim
        dim2 = output_dim if l == num_layers - 1 else mlp_dim
        mlp.append(nn.Linear(dim1, dim2, bias=False))
        if l < num_layers - 1:
            mlp.append(nn.BatchNorm1d(dim2))
            mlp.append(nn.ReLU(inplace=True))
        elif last_bn:
            mlp.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*mlp)


class VisionTransformerMoCo(nn.Module):
    """The base encoder: timm-named ViT backbone + moco-v3's 3-layer projector `head`."""

    def __init__(self, img=224, patch=16, dim=384, depth=12, heads=12, mlp_dim=4096, out_dim=256, stop_grad_conv1=True):
        super().__init__()
        self.embed_dim = dim
        self.patch_embed = PatchEmbed(img, patch, dim)
        gh, gw = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(gh, gw, dim)[None], requires_grad=False)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = build_mlp(3, dim, mlp_dim, out_dim)
        if stop_grad_conv1:
            self.patch_embed.proj.weight.requires_grad = False
            self.patch_embed.proj.bias.requires_grad = False

    @torch.no_grad()
    def mocov3_init(self):
        """`VisionTransformerMoCo.__init__`'s init: qkv uniform +-sqrt(6 / (out/3 + in)), other backbone Linears
        xavier-uniform, biases 0, cls_token N(0, 1e-6), patch_embed uniform +-sqrt(6 / (3 p^2 + D)), bias 0. The
        head keeps torch's default Linear init (moco-v3 replaces timm's head after this init)."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("head"):
                if "qkv" in name:
                    val = math.sqrt(6.0 / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -val, val)
                else:
                    nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=1e-6)
        w = self.patch_embed.proj.weight
        val = math.sqrt(6.0 / float(3 * w.shape[2] * w.shape[3] + self.embed_dim))
        nn.init.uniform_(w, -val, val)
        nn.init.zeros_(self.patch_embed.proj.bias)

    def forward_features(self, x):
        """x: [B, 3, H, W] -> cls feature [B, D]."""
        x = self.patch_embed(x)  # [B, T-1, D]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed  # [B, T, D]
        x = self.norm(self.blocks(x))
        return x[:, 0]

    def forward(self, x):
        return self.head(self.forward_features(x))

    def backbone_state_dict(self):
        """The timm-named backbone tensors (no head)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}


class MoCoViT(nn.Module):
    """moco-v3's `MoCo_ViT` on one process (no all-gather: labels = arange(N))."""

    def __init__(self, T=0.2, mlp_dim=4096, out_dim=256, **vit):
        super().__init__()
        self.T = T
        self.base_encoder = VisionTransformerMoCo(mlp_dim=mlp_dim, out_dim=out_dim, **vit)
        self.momentum_encoder = copy.deepcopy(self.base_encoder)
        self.predictor = build_mlp(2, out_dim, mlp_dim, out_dim)
        self.base_encoder.mocov3_init()
        self.sync_momentum_encoder()
        for p in self.momentum_encoder.parameters():
            p.requires_grad = False

    def sync_momentum_encoder(self):
        """moco-v3's init: momentum parameters = base parameters (its BN buffers stay its own)."""
        for pb, pm in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            pm.data.copy_(pb.data)

    @torch.no_grad()
    def _update_momentum_encoder(self, m):
        for pb, pm in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            pm.data = pm.data * m + pb.data * (1.0 - m)

    def contrastive_loss(self, q, k):
        q = F.normalize(q, dim=1)
        k = F.normalize(k, dim=1)
        logits = torch.einsum("nc,mc->nm", [q, k]) / self.T
        labels = torch.arange(logits.shape[0], dtype=torch.long, device=logits.device)
        return nn.CrossEntropyLoss()(logits, labels) * (2 * self.T)

    def forward(self, x1, x2, m, return_qk=False):
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            self._update_momentum_encoder(m)
            k1 = self.momentum_encoder(x1)
            k2 = self.momentum_encoder(x2)
        loss = self.contrastive_loss(q1, k2) + self.contrastive_loss(q2, k1)
        return (loss, q1, q2, k1, k2) if return_qk else loss


def init_weights(model):
    """The fill rules of make_vit_fixture.py's docstring (name-seeded values, as the Rust tests fill them), over the base encoder's and the predictor's parameters."""
    from make_resnet_fixture import fill  # the name-seeded generator the Rust tests share

    named = [(n, m) for n, m in model.base_encoder.named_modules()]
    named += [("predictor." + n if n else "predictor", m) for n, m in model.predictor.named_modules()]
    with torch.no_grad():
        for prefix, mod in named:
            for pname, p in mod.named_parameters(recurse=False):
                name = f"{prefix}.{pname}" if prefix else pname
                if name == "pos_embed":
                    continue
                if name == "cls_token":
                    p.copy_(fill(name, p.shape, 0.02))
                elif isinstance(mod, (nn.Linear, nn.Conv2d)) and pname == "weight":
                    p.copy_(fill(name, p.shape, 1.0 / math.sqrt(math.prod(p.shape[1:]))))
                elif isinstance(mod, (nn.LayerNorm, nn.BatchNorm1d)) and pname == "weight":
                    p.copy_(fill(name, p.shape, 0.1, 1.0))
                elif pname == "bias":
                    p.copy_(fill(name, p.shape, 0.1))
                else:
                    raise ValueError(f"no fill rule for {name}")
    model.sync_momentum_encoder()


def add_vit_args(ap, img, patch, dim, depth, heads):
    """`--img --patch --dim --depth --heads`, the shape of a `MoCoViT` (scripts/bench_pytorch.py takes them too),
    with these defaults."""
    for flag, default in (("--img", img), ("--patch", patch), ("--dim", dim), ("--depth", depth), ("--heads", heads)):
        ap.add_argument(flag, type=int, default=default)


def main():
    ap = argparse.ArgumentParser(description="write a backbone + features pair for scripts/check_vit_export.py")
    ap.add_argument("--export", required=True, help="backbone safetensors (timm names, no head)")
    ap.add_argument("--features", required=True, help="safetensors {x [n,3,H,W], features [n,D]}")
    add_vit_args(ap, img=32, patch=8, dim=64, depth=2, heads=4)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--init", choices=["fill", "mocov3"], default="fill",
                    help="fill: make_vit_fixture.py's rules (every bias and LN parameter non-trivial); mocov3: its init")
    args = ap.parse_args()
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = MoCoViT(mlp_dim=96, out_dim=32, img=args.img, patch=args.patch, dim=args.dim, depth=args.depth,
                    heads=args.heads)
    if args.init == "fill":
        sys.path.insert(0, os.path.dirname(__file__))
        init_weights(model)
    enc = model.base_encoder.eval()
    x = torch.randn(args.n, 3, args.img, args.img)
    with torch.no_grad():
        feats = enc.forward_features(x)
    save_file({k: v.contiguous() for k, v in enc.backbone_state_dict().items()}, args.export,
              metadata={"num_heads": str(args.heads)})
    save_file({"x": x, "features": feats.contiguous()}, args.features)
    print(f"wrote {args.export} ({len(enc.backbone_state_dict())} tensors) and {args.features} ({tuple(feats.shape)})")


if __name__ == "__main__":
    main()
