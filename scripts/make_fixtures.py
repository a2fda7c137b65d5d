#!/usr/bin/env python3
"""Generate the PyTorch reference fixtures used by the `moco` crate's tests.

Writes (all tensors float32, safetensors format) into tests/fixtures/:

  moco_v2_head.safetensors        MoCo v1/v2 contrastive head (N=6, C=10, K=13, T=0.2, seed 0)
  moco_v2_head_large.safetensors  same head at N=32, C=128, K=1000, T=0.07, seed 1 (no "l_neg")
  moco_v3_loss.safetensors        MoCo v3 symmetric contrastive loss (N=7, C=9, T=0.2, seed 2)
  ema.safetensors                 momentum (EMA) key-encoder update (1000 params, m=0.99, seed 3)
  ema_momenta.safetensors         the same update at m in {0, 0.5, 0.99, 0.999, 0.9999, 1} (4099 params, seed 4)

The math follows facebookresearch/moco `moco/builder.py` (MoCo.forward) and
facebookresearch/moco-v3 `moco/builder.py` (MoCo.contrastive_loss / forward)
exactly, re-written here without the encoders / DDP plumbing.

Tensor layout notes:
  * The official MoCo queue is stored as [C, K] (one key per column); the fixture
    stores "queue" as [K, C] (one key per row), i.e. queue_ck.T.contiguous().
  * "l_pos" / "l_neg" are the *unscaled* cosine similarities (before / T).
  * Scalars ("temperature", "loss", "top1", "top5", "momentum") are shape [1].
  * "top1" / "top5" are counts (not percentages) of rows whose positive ranks
    first / within the first five, where rank(i) = #{j : l_neg[i, j] > l_pos[i]}.

Run from the repository root:

    /opt/torchvenv/bin/python scripts/make_fixtures.py
"""

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, os.pardir, "tests", "fixtures")


def scalar(x):
    return torch.tensor([float(x)], dtype=torch.float32)


def save(name, tensors):
    path = os.path.normpath(os.path.join(OUT_DIR, name))
    # float32, except float64 tensors kept as they are (the momenta of ema_momenta, which must not be rounded)
    tensors = {k: v.detach().to(v.dtype if v.dtype == torch.float64 else torch.float32).contiguous() for k, v in tensors.items()}
    save_file(tensors, path)
    size = os.path.getsize(path)
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in tensors.items())
    print(f"wrote {path} ({size} bytes): {shapes}")


def moco_v2_head(seed, n, c, k_len, t, include_l_neg=True):
    """MoCo v1/v2 head, as in facebookresearch/moco builder.py MoCo.forward."""
    torch.manual_seed(seed)
    q = torch.randn(n, c, dtype=torch.float32).requires_grad_(True)
    k = torch.randn(n, c, dtype=torch.float32)
    queue_ck = F.normalize(torch.randn(c, k_len, dtype=torch.float32), dim=0)

    qn = F.normalize(q, dim=1)
    kn = F.normalize(k, dim=1)
    # positive logits: Nx1
    l_pos = torch.einsum("nc,nc->n", [qn, kn]).unsqueeze(-1)
    # negative logits: NxK
    l_neg = torch.einsum("nc,ck->nk", [qn, queue_ck.clone().detach()])
    logits = torch.cat([l_pos, l_neg], dim=1)
    logits /= t
    labels = torch.zeros(logits.shape[0], dtype=torch.long)

    loss = nn.CrossEntropyLoss()(logits, labels)
    loss.backward()

    row_loss = F.cross_entropy(logits.detach(), labels, reduction="none")
    rank = (l_neg.detach() > l_pos.detach()).sum(dim=1)
    top1 = (rank < 1).sum()
    top5 = (rank < 5).sum()

    out = {
        "q": q.detach(),
        "k": k,
        "queue": queue_ck.t().contiguous(),
        "temperature": scalar(t),
        "loss": loss.detach().reshape(1),
        "row_loss": row_loss,
        "dq": q.grad,
        "l_pos": l_pos.detach().squeeze(-1),
        "l_neg": l_neg.detach(),
        "top1": scalar(top1.item()),
        "top5": scalar(top5.item()),
    }
    if not include_l_neg:
        del out["l_neg"]
    return out


def moco_v3_loss(seed, n, c, t):
    """MoCo v3 symmetric loss, as in facebookresearch/moco-v3 builder.py
    (single process: the all_gather of k is the identity, labels = arange(N))."""
    torch.manual_seed(seed)
    q1 = torch.randn(n, c, dtype=torch.float32).requires_grad_(True)
    q2 = torch.randn(n, c, dtype=torch.float32).requires_grad_(True)
    k1 = torch.randn(n, c, dtype=torch.float32)
    k2 = torch.randn(n, c, dtype=torch.float32)

    def ctr(q, k):
        q = F.normalize(q, dim=1)
        k = F.normalize(k, dim=1)
        logits = torch.einsum("nc,mc->nm", [q, k]) / t
        labels = torch.arange(logits.shape[0], dtype=torch.long)
        return nn.CrossEntropyLoss()(logits, labels) * (2 * t)

    loss = ctr(q1, k2) + ctr(q2, k1)
    loss.backward()
    return {
        "q1": q1.detach(),
        "q2": q2.detach(),
        "k1": k1,
        "k2": k2,
        "temperature": scalar(t),
        "loss": loss.detach().reshape(1),
        "dq1": q1.grad,
        "dq2": q2.grad,
    }


def ema(seed, numel, m):
    """Momentum update, as in MoCo._momentum_update_key_encoder."""
    torch.manual_seed(seed)
    q = torch.randn(numel, dtype=torch.float32)
    k = torch.randn(numel, dtype=torch.float32)
    k_before = k.clone()
    with torch.no_grad():
        k_after = k * m + q * (1.0 - m)
    return {
        "q": q,
        "k_before": k_before,
        "k_after": k_after,
        "momentum": scalar(m),
    }


EMA_MOMENTA = [0.0, 0.5, 0.99, 0.999, 0.9999, 1.0]


def ema_momenta(seed, numel):
    """MoCo's update `param_k * m + param_q * (1. - m)` with m a Python float (1 - m taken in double, as in
    moco/builder.py and moco-v3), at the six momenta of EMA_MOMENTA; values spread over six decades."""
    torch.manual_seed(seed)
    scale = 10.0 ** torch.empty(numel).uniform_(-3.0, 3.0)
    q = torch.randn(numel, dtype=torch.float32) * scale
    k = torch.randn(numel, dtype=torch.float32) * scale.flip(0)
    out = {"q": q, "k_before": k.clone(), "momenta": torch.tensor(EMA_MOMENTA, dtype=torch.float64)}
    with torch.no_grad():
        for i, m in enumerate(EMA_MOMENTA):
            out[f"k_after_{i}"] = k * m + q * (1.0 - m)
    return out


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    save("moco_v2_head.safetensors", moco_v2_head(seed=0, n=6, c=10, k_len=13, t=0.2))
    save(
        "moco_v2_head_large.safetensors",
        moco_v2_head(seed=1, n=32, c=128, k_len=1000, t=0.07, include_l_neg=False),
    )
    save("moco_v3_loss.safetensors", moco_v3_loss(seed=2, n=7, c=9, t=0.2))
    save("ema.safetensors", ema(seed=3, numel=1000, m=0.99))
    save("ema_momenta.safetensors", ema_momenta(seed=4, numel=4099))


if __name__ == "__main__":
    main()
