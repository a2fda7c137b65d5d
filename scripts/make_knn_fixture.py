#!/usr/bin/env python3
"""Writes tests/fixtures/knn.safetensors: inputs and PyTorch predictions of the weighted kNN monitor.

The monitor is the one of the MoCo CIFAR-10 demo notebook: the bank holds L2-normalised train features with
their labels, every test feature is L2-normalised, its cosine similarities to the whole bank are taken, the k
most similar bank entries vote for their class with weight exp(sim / t), and the class with the largest summed
weight is the prediction (the first entry of a descending argsort of the class scores).

This file re-derives that procedure in plain torch (float32, as in the notebook) and also in float64, so the
Rust test can tell genuine disagreements from near-ties:

  margin_k{K}[q]   (top class score - second class score) / top class score, float64 recomputation
  gap_k{K}[q]      sim of the k-th neighbour - sim of the (k+1)-th, float64 (inf when k == M)

Run from the repository root:  /opt/torchvenv/bin/python scripts/make_knn_fixture.py
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

M, Q, D, C = 500, 64, 32, 10
KS = (20, 200)
T = 0.1
SEED = 1234


def knn_scores(queries, bank, bank_labels, classes, k, t):
    """Class scores [Q, C]: one-hot labels of the k nearest bank rows, times exp(sim / t), summed over k."""
    q = F.normalize(queries, dim=1)
    b = F.normalize(bank, dim=1)
    sim = q @ b.t()                                    # [Q, M] cosine similarities
    top_sim, top_idx = sim.topk(k, dim=1)              # [Q, k] each, most similar first
    nbr_labels = bank_labels[top_idx]                  # [Q, k] class of every neighbour
    weight = torch.exp(top_sim / t)                    # [Q, k]
    onehot = F.one_hot(nbr_labels, classes).to(weight.dtype)   # [Q, k, C]
    scores = (onehot * weight.unsqueeze(-1)).sum(dim=1)        # [Q, C]
    return scores, sim


def knn_predict(queries, bank, bank_labels, classes, k, t):
    scores, _ = knn_scores(queries, bank, bank_labels, classes, k, t)
    ranking = scores.argsort(dim=1, descending=True)   # best class first
    return ranking[:, 0]


def main():
    g = torch.Generator().manual_seed(SEED)
    # Clustered features so the kNN accuracy is far from chance: class centres plus wide noise (top-1 well below 100%, so votes are contested).
    centres = torch.randn(C, D, generator=g)
    bank_labels = torch.randint(0, C, (M,), generator=g)
    query_labels = torch.randint(0, C, (Q,), generator=g)
    bank = (centres[bank_labels] + 2.5 * torch.randn(M, D, generator=g)).float()
    queries = (centres[query_labels] + 2.5 * torch.randn(Q, D, generator=g)).float()

    out = {
        "bank": bank.contiguous(),
        "bank_labels": bank_labels.to(torch.int64),
        "queries": queries.contiguous(),
        "query_labels": query_labels.to(torch.int64),
        "t": torch.tensor([T], dtype=torch.float32),
        "num_classes": torch.tensor([C], dtype=torch.int64),
    }
    for k in KS:
        pred = knn_predict(queries, bank, bank_labels, C, k, T)
        s64, sim64 = knn_scores(queries.double(), bank.double(), bank_labels, C, k, T)
        top2 = s64.topk(2, dim=1).values
        margin = (top2[:, 0] - top2[:, 1]) / top2[:, 0]
        sorted_sim = sim64.sort(dim=1, descending=True).values
        gap = sorted_sim[:, k - 1] - sorted_sim[:, k] if k < M else torch.full((Q,), float("inf"), dtype=torch.float64)
        pred64 = s64.argsort(dim=1, descending=True)[:, 0]
        acc = (pred == query_labels).double().mean().item()
        print(f"k={k}: top-1 {acc:.4f}, f32/f64 disagreements {(pred != pred64).sum().item()}, "
              f"min margin {margin.min().item():.3e}, min gap {gap.min().item():.3e}")
        out[f"pred_k{k}"] = pred.to(torch.int64).contiguous()
        out[f"margin_k{k}"] = margin.contiguous()
        out[f"gap_k{k}"] = gap.contiguous()
        out[f"top1_k{k}"] = torch.tensor([acc], dtype=torch.float64)

    path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "knn.safetensors")
    save_file(out, path)
    print(f"wrote {os.path.normpath(path)} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
