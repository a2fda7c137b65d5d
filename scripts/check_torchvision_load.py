"""Loads a ResNet-18 exported by `cargo run --release --example export_resnet18 -- DIR` into torchvision with
`load_state_dict(strict=True)` and checks that torchvision's eval-mode output equals the crate's.

    cargo run --release --example export_resnet18 -- target/export
    /opt/torchvenv/bin/python scripts/check_torchvision_load.py target/export
"""
import sys

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file


def main(d):
    m = torchvision.models.resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    state = load_file(f"{d}/resnet18_cifar.safetensors")
    result = m.load_state_dict(state, strict=True)
    print("load_state_dict(strict=True):", result)
    io = load_file(f"{d}/io.safetensors")
    m.eval()
    with torch.no_grad():
        y = m(io["input"])
    err = (y - io["output_eval"]).abs().max().item()
    scale = io["output_eval"].abs().max().item()
    print(f"max |torchvision - moco| = {err:.3e} (outputs up to {scale:.3f})")
    assert err <= 1e-4 * max(scale, 1.0), "outputs differ"
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/export")
