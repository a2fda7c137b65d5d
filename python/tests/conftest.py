"""The `device` fixture: every op test of test_ops.py runs on CPU tensors and, where PyTorch has a GPU and the
extension can run its CUDA kernels (moco_torch.cuda_status()), on CUDA tensors too (scripts/device_bench.sh on a
lent GPU). Without one the CUDA cases skip, saying why; the CUDA half of the extension is still checked on the
emulated driver (test_cuda_emulated.py)."""

import pytest
import torch


def cuda_skip_reason():
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    import moco_torch

    ok, why = moco_torch.cuda_status()
    return None if ok else f"moco_torch cannot run CUDA: {why}"


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda":
        why = cuda_skip_reason()
        if why:
            pytest.skip(why)
    return torch.device(request.param)
