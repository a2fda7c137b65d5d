"""Loads a backbone written by `train_resnet18 --export PATH` into torchvision's resnet18 (CIFAR stem, no head)
with `load_state_dict(strict=True)` and runs it once in eval mode.

    cargo run --release --example train_resnet18 -- --export target/backbone.safetensors
    /opt/torchvenv/bin/python scripts/check_backbone_export.py target/backbone.safetensors
"""
import sys

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file


def main(path):
    m = torchvision.models.resnet18()
    m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    print("load_state_dict(strict=True):", m.load_state_dict(load_file(path), strict=True))
    m.eval()
    with torch.no_grad():
        f = m(torch.randn(4, 3, 32, 32))
    assert f.shape == (4, 512) and torch.isfinite(f).all(), f.shape
    print(f"features {tuple(f.shape)}, finite; num_batches_tracked {int(m.bn1.num_batches_tracked)}; OK")


if __name__ == "__main__":
    main(sys.argv[1])
