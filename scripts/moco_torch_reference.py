"""The same MoCo v1 run in PyTorch, for comparison with `train_resnet18` on a CIFAR-10-format .bin dataset:
the colab's model (ResNet-18 CIFAR stem, SplitBatchNorm, linear head to 128), queue, momentum encoder, loss,
SGD + cosine and kNN monitor (k=200, t=0.1 on the L2-normalised encoder outputs), with torchvision's transforms.

    /opt/torchvenv/bin/python scripts/moco_torch_reference.py --data ../shared/data/digits --epochs 10 \
        --lr 0.03 --momentum 0.95 --queue 512 --crop-min 0.5 --no-flip
"""
import argparse
import copy
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image


def load_bin(path):
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), raw[:, 0].astype(np.int64)


class SplitBatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, num_splits):
        super().__init__(num_features)
        self.num_splits = num_splits

    def forward(self, x):
        n, c, h, w = x.shape
        if self.training:
            rm, rv = self.running_mean.repeat(self.num_splits), self.running_var.repeat(self.num_splits)
            out = F.batch_norm(x.view(-1, c * self.num_splits, h, w), rm, rv, self.weight.repeat(self.num_splits),
                               self.bias.repeat(self.num_splits), True, self.momentum, self.eps).view(n, c, h, w)
            self.running_mean.data.copy_(rm.view(self.num_splits, c).mean(dim=0))
            self.running_var.data.copy_(rv.view(self.num_splits, c).mean(dim=0))
            return out
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, self.momentum, self.eps)


def encoder(dim, splits):
    m = torchvision.models.resnet18(num_classes=dim, norm_layer=lambda c: SplitBatchNorm(c, splits))
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--momentum", type=float, default=0.99)
    ap.add_argument("--queue", type=int, default=4096)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--crop-min", type=float, default=0.2)
    ap.add_argument("--no-flip", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    xtr, ytr = load_bin(f"{a.data}/train.bin")
    xte, yte = load_bin(f"{a.data}/test.bin")
    norm = T.Normalize([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
    aug = T.Compose([T.RandomResizedCrop(32, scale=(a.crop_min, 1.0)), T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.4)], p=1.0),
                     T.RandomGrayscale(p=0.2)] + ([] if a.no_flip else [T.RandomHorizontalFlip()]) + [T.ToTensor(), norm])
    plain = T.Compose([T.ToTensor(), norm])
    enc_q = encoder(128, 8)
    enc_k = copy.deepcopy(enc_q)
    for p in enc_k.parameters():
        p.requires_grad = False
    opt = torch.optim.SGD(enc_q.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    queue = F.normalize(torch.randn(128, a.queue), dim=0)
    ptr = 0

    def knn():
        enc_q.eval()
        with torch.no_grad():
            emb = lambda xs: F.normalize(torch.cat([enc_q(torch.stack([plain(Image.fromarray(x)) for x in xs[i:i + 256]])) for i in range(0, len(xs), 256)]), dim=1)
            bank, q = emb(xtr), emb(xte)
            sim = q @ bank.t()
            w, idx = sim.topk(200, dim=1)
            onehot = F.one_hot(torch.from_numpy(ytr)[idx], 10).float()
            pred = (onehot * (w / 0.1).exp().unsqueeze(-1)).sum(1).argmax(1)
        enc_q.train()
        return 100.0 * (pred.numpy() == yte).mean()

    print(f"epoch 0 (random init): kNN top-1 {knn():.2f}%", flush=True)
    steps = len(xtr) // a.batch
    for epoch in range(a.epochs):
        for g in opt.param_groups:
            g["lr"] = a.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / a.epochs))
        perm = torch.randperm(len(xtr))
        t0, losses = time.time(), []
        for s in range(steps):
            ids = perm[s * a.batch:(s + 1) * a.batch].tolist()
            x1 = torch.stack([aug(Image.fromarray(xtr[i])) for i in ids])
            x2 = torch.stack([aug(Image.fromarray(xtr[i])) for i in ids])
            q = F.normalize(enc_q(x1), dim=1)
            with torch.no_grad():
                for pq, pk in zip(enc_q.parameters(), enc_k.parameters()):
                    pk.data = pk.data * a.momentum + pq.data * (1.0 - a.momentum)
                k = F.normalize(enc_k(x2), dim=1)
            logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.clone().detach()], dim=1) / a.temperature
            loss = F.cross_entropy(logits, torch.zeros(len(ids), dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for r in range(k.shape[0]):
                    queue[:, (ptr + r) % a.queue] = k[r]
                ptr = (ptr + k.shape[0]) % a.queue
            losses.append(loss.item())
        print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, kNN top-1 {knn():.2f}%, {steps * a.batch / (time.time() - t0):.1f} pairs/s", flush=True)


if __name__ == "__main__":
    main()
