"""ResNet fixtures for the ResNet issue, in training mode (batch-statistics BN) and in eval mode:
  - resnet18_cifar: torchvision's resnet18 with conv1 = 3x3/1, no maxpool, 10 classes, batch 4 at 32x32;
  - resnet50_imagenet: torchvision's resnet50 as is (conv 7x7/2 + maxpool, Bottleneck), 7 classes, batch 2 at 128x128 (each Bottleneck's last BN gamma near 0.2: at smaller inputs or with gamma near 1 the network is chaotic at init and torch's own f32 and f64 gradients differ by up to 30 %; here by 7e-6).

The weights and the input are not stored: they come from a counter-based generator (splitmix64 of the tensor's
name and the element index) that the Rust test reproduces bit for bit, so the fixture stays small. Stored:
  - "logits_train" [4,10], "loss_train" [1]: forward in train mode, cross-entropy with labels "labels" [4] (f32)
  - for every parameter P: "grad/P" in full when it has <= 4096 elements, else "gradsum/P" = [sum, sum of squares,
    dot with the +-1 pattern sign(i), first 16 elements...] (19 values)
  - "running_mean/L", "running_var/L" for every BN layer after the train-mode forward (momentum 0.1)
  - "logits_eval" [4,10]: eval-mode forward with the updated running statistics

    /opt/torchvenv/bin/python scripts/make_resnet_fixture.py    # writes tests/fixtures/resnet{18_cifar,50_imagenet}.safetensors
"""
import math
import os

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file

MASK = (1 << 64) - 1


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def name_seed(name):
    """FNV-1a 64 of the name's UTF-8 bytes: the per-tensor seed (trivial to reproduce in Rust)."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def uniform(name, n):
    """n values in [-1, 1): u = (splitmix64(seed + i) >> 11) * 2^-53, value = 2u - 1, computed in f64."""
    seed = name_seed(name)
    return torch.tensor([((splitmix64((seed + i) & MASK) >> 11) * 2.0**-53) * 2.0 - 1.0 for i in range(n)], dtype=torch.float64)


def fill(name, shape, scale, shift=0.0):
    n = math.prod(shape)
    return (uniform(name, n) * scale + shift).to(torch.float32).reshape(shape)


CONFIGS = {
    # name: (builder, classes, CIFAR stem, batch, H, W, labels)
    "resnet18_cifar": (torchvision.models.resnet18, 10, True, 4, 32, 32, [3, 1, 4, 1]),
    "resnet50_imagenet": (torchvision.models.resnet50, 7, False, 2, 128, 128, [5, 2]),
}


def model(name):
    build, classes, cifar, *_ = CONFIGS[name]
    m = build(num_classes=classes)
    if cifar:
        m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        m.maxpool = nn.Identity()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 4:  # conv: uniform with the std of kaiming-normal fan_out, sqrt(2 / fan_out)
                fan_out = p.shape[0] * p.shape[2] * p.shape[3]
                p.copy_(fill(name, p.shape, math.sqrt(2.0 / fan_out) * math.sqrt(3.0)))
            elif name.endswith("bn3.weight"):  # Bottleneck's last BN gamma near 0.2: keeps ResNet-50 well conditioned
                p.copy_(fill(name, p.shape, 0.1, 0.2))
            elif name.endswith("weight") and p.ndim == 1:  # BN gamma near 1
                p.copy_(fill(name, p.shape, 0.2, 1.0))
            elif p.ndim == 1:  # BN beta and fc bias near 0
                p.copy_(fill(name, p.shape, 0.1))
            else:  # fc weight
                p.copy_(fill(name, p.shape, 1.0 / math.sqrt(p.shape[1])))
    return m


def main(arch):
    torch.set_num_threads(2)
    m = model(arch).train()
    _, _, _, n, h, w, labels = CONFIGS[arch]
    x = fill("input", (n, 3, h, w), 1.0)
    labels = torch.tensor(labels)
    logits = m(x)
    loss = nn.CrossEntropyLoss()(logits, labels)
    loss.backward()
    out = {"labels": labels.to(torch.float32), "logits_train": logits.detach(), "loss_train": loss.detach().reshape(1)}
    sign = None
    for name, p in m.named_parameters():
        g = p.grad.detach().reshape(-1).to(torch.float64)
        if g.numel() <= 4096:
            out["grad/" + name] = g.to(torch.float32)
        else:
            sign = torch.where(torch.arange(g.numel()) % 2 == 0, 1.0, -1.0).to(torch.float64)
            summary = torch.cat([torch.stack([g.sum(), (g * g).sum(), (g * sign).sum()]), g[:16]])
            out["gradsum/" + name] = summary.to(torch.float32)
    for name, mod in m.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            out["running_mean/" + name] = mod.running_mean.clone()
            out["running_var/" + name] = mod.running_var.clone()
    m.eval()
    with torch.no_grad():
        out["logits_eval"] = m(x)
    path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", f"{arch}.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path)
    print(f"wrote {path}: {len(out)} tensors, loss {loss.item():.6f}")


if __name__ == "__main__":
    for name in CONFIGS:
        main(name)
