"""CUDA tensors on a real GPU (scripts/device_bench.sh on a lent one; skipped elsewhere, where the emulated driver
checks the same native calls: test_cuda_emulated.py). test_ops.py's correctness cases run on CUDA tensors through
its `device` fixture; these are the CUDA-only properties: the ops queue on PyTorch's current stream and never wait
for it, a non-default stream orders them with PyTorch's own work, tensors on two devices are refused, and the
current device does not change."""

import pytest
import torch
import torch.nn.functional as F

import moco_torch as mt
from conftest import cuda_skip_reason
from test_ops import assert_close, official_infonce, unit_queue

pytestmark = pytest.mark.skipif(cuda_skip_reason() is not None, reason=str(cuda_skip_reason()))

SLEEP_CYCLES = 200_000_000  # ~0.1 s of GPU time queued ahead of the ops


def test_ops_on_a_non_default_stream_order_with_pytorch_and_never_wait():
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(1)
    q, key = torch.randn(32, 128, generator=g), torch.randn(32, 128, generator=g)
    queue = unit_queue(4096, 128, torch.float16, 2)
    pk, pq = [torch.randn(1000, generator=g) for _ in range(3)], [torch.randn(1000, generator=g) for _ in range(3)]
    want_loss, _ = official_infonce(q, key, queue, 0.2)
    want_ema = [a * 0.99 + b * (1.0 - 0.99) for a, b in zip(pk, pq)]
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        # PyTorch's own work on the side stream first: a long sleep, then the copies the ops read
        torch.cuda._sleep(SLEEP_CYCLES)
        qd, kd, queue_d = q.to(dev, non_blocking=True), key.to(dev, non_blocking=True), queue.to(dev, non_blocking=True)
        pkd, pqd = [t.to(dev) for t in pk], [t.to(dev) for t in pq]
        r = mt.infonce(qd, kd, queue_d, 0.2)
        l_pos, l_neg = mt.logits(qd, kd, queue_d, 0.2)
        ptr = mt.enqueue_(queue_d, kd, 4090)
        mt.ema_(pkd, pqd, 0.99)
        still_busy = not side.query()
    assert still_busy, "a call waited for the stream (or the sleep was too short to tell)"
    assert ptr == (4090 + 32) % 4096
    side.synchronize()
    assert abs(r.loss.item() - want_loss.item()) <= 1e-5 * want_loss.item()
    _, want_logits = official_infonce(q, key, queue, 1.0)
    assert_close("logits", torch.cat([l_pos, l_neg], dim=1) * 0.2, want_logits, 1e-5)
    for a, w in zip(pkd, want_ema):
        assert torch.equal(a.cpu(), w)
    rows = [(4090 + i) % 4096 for i in range(32)]
    assert_close("enqueued", queue_d[rows].float(), F.normalize(key, dim=1).half().float(), 1e-3)


def test_backward_on_a_side_stream():
    dev = torch.device("cuda")
    q = torch.randn(16, 64, requires_grad=True)
    key, queue = torch.randn(16, 64), unit_queue(512, 64, torch.bfloat16, 3)
    want, _ = official_infonce(q, key, queue, 0.1)
    (want_grad,) = torch.autograd.grad(want, q)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(SLEEP_CYCLES)
        qd = q.detach().to(dev).requires_grad_()
        loss = mt.infonce(qd, key.to(dev), queue.to(dev), 0.1).loss
        loss.backward()
    side.synchronize()
    assert_close("dq", qd.grad, want_grad, 1e-5)


def test_tensors_on_two_devices_are_refused():
    q = torch.randn(4, 8, device="cuda")
    with pytest.raises(ValueError, match="k: expected a tensor on cuda:0"):
        mt.infonce(q, torch.randn(4, 8), unit_queue(16, 8, torch.float32, 1).cuda(), 0.2)
    with pytest.raises(ValueError, match="queue: expected a tensor on cuda:0"):
        mt.infonce(q, q, unit_queue(16, 8, torch.float32, 1), 0.2)
    with pytest.raises(ValueError, match="params_q\\[0\\]: expected a tensor on cuda:0"):
        mt.ema_([q], [q.cpu()], 0.9)


def test_the_current_device_does_not_change():
    before = torch.cuda.current_device()
    last = torch.cuda.device_count() - 1  # another device than the current one where there are two
    q = torch.randn(4, 8, device=f"cuda:{last}")
    r = mt.infonce(q, q, unit_queue(16, 8, torch.float32, 1).to(q.device), 0.2)
    assert torch.cuda.current_device() == before
    assert r.loss.device == q.device and torch.isfinite(r.loss).item()
