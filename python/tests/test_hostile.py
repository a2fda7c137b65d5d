"""Hostile inputs raise the stated exception (TypeError for a wrong type or dtype, ValueError for a wrong device,
layout, shape or value) with what was expected and what was given; none reaches the kernels or crashes."""

import math

import pytest
import torch

import moco_torch as mt

q = torch.randn(4, 8)
k = torch.randn(4, 8)
queue = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
meta = torch.empty(4, 8, device="meta")

CASES = [
    # (what, call, exception, text in the message)
    ("q is a list", lambda: mt.infonce(q.tolist(), k, queue, 0.2), TypeError, "expected a torch.Tensor, got list"),
    ("q is float64", lambda: mt.infonce(q.double(), k, queue, 0.2), TypeError, "expected dtype float32, got float64"),
    ("q is int32", lambda: mt.infonce(q.int(), k, queue, 0.2), TypeError, "got int32"),
    ("k is float16", lambda: mt.infonce(q, k.half(), queue, 0.2), TypeError, "k: expected dtype float32"),
    ("queue is float64", lambda: mt.infonce(q, k, queue.double(), 0.2), TypeError, "float32 or float16 or bfloat16"),
    ("q is not contiguous", lambda: mt.infonce(torch.randn(8, 4).t(), k, queue, 0.2), ValueError, "contiguous"),
    ("queue is not contiguous", lambda: mt.infonce(q, k, torch.randn(8, 16).t(), 0.2), ValueError, "contiguous"),
    ("q is 1-D", lambda: mt.infonce(q.flatten(), k, queue, 0.2), ValueError, "expected 2 dimensions"),
    ("q is empty", lambda: mt.infonce(torch.empty(0, 8), k, queue, 0.2), ValueError, "non-empty"),
    ("k has other rows", lambda: mt.infonce(q, k[:3], queue, 0.2), ValueError, "k: expected shape (4, 8)"),
    ("k has other columns", lambda: mt.infonce(q, torch.randn(4, 9), queue, 0.2), ValueError, "k: expected shape (4, 8)"),
    ("queue in the official [C, K] layout", lambda: mt.infonce(q, k, queue.t().contiguous(), 0.2), ValueError, "queue_from_official"),
    ("N > K", lambda: mt.infonce(torch.randn(20, 8), torch.randn(20, 8), queue, 0.2), ValueError, "K >= N = 20"),
    ("T = 0", lambda: mt.infonce(q, k, queue, 0.0), ValueError, "T > 0, got 0.0"),
    ("T < 0", lambda: mt.infonce(q, k, queue, -0.1), ValueError, "T > 0"),
    ("T NaN", lambda: mt.infonce(q, k, queue, math.nan), ValueError, "got nan"),
    ("T inf", lambda: mt.infonce(q, k, queue, math.inf), ValueError, "finite"),
    ("T a string", lambda: mt.infonce(q, k, queue, "0.2"), TypeError, "temperature: expected a Python float, got str"),
    ("precision unknown", lambda: mt.infonce(q, k, queue, 0.2, precision="fast"), ValueError, "precision: expected 'fp32', 'tf32x3', 'tf32' or 'half', got 'fast'"),
    ("v3: precision unknown", lambda: mt.moco_v3_loss(q, q, k, k, 0.2, precision="tf16"), ValueError, "precision: expected 'fp32', 'tf32x3', 'tf32' or 'half'"),
    ("logits: precision None", lambda: mt.logits(q, k, queue, 0.2, precision=None), ValueError, "got None"),
    ("MoCoLoss: precision unknown", lambda: mt.MoCoLoss(K=8, dim=8, precision="int8"), ValueError, "precision"),
    ("T a tensor", lambda: mt.infonce(q, k, queue, torch.tensor(0.2)), TypeError, "got Tensor"),
    ("T below the kernels' range", lambda: mt.infonce(q, k, queue, 1e-9), ValueError, "temperature"),
    ("q on another device", lambda: mt.infonce(meta, k, queue, 0.2), ValueError, "expected a CPU or CUDA tensor, got one on meta"),
    ("k on another device than q", lambda: mt.infonce(q, meta, queue, 0.2), ValueError, "k: expected a tensor on cpu (as the first tensor), got one on meta"),
    ("queue on another device than q", lambda: mt.infonce(q, k, queue.to("meta"), 0.2), ValueError, "queue: expected a tensor on cpu"),
    ("v3: k2 on another device than q1", lambda: mt.moco_v3_loss(q, q, k, meta, 0.2), ValueError, "k2: expected a tensor on cpu"),
    ("enqueue: queue on another device than the keys", lambda: mt.enqueue_(queue.to("meta"), k, 0), ValueError, "queue: expected a tensor on cpu"),
    ("logits: queue of other C", lambda: mt.logits(q, k, torch.randn(16, 5), 0.2), ValueError, "queue: expected shape (K, 8)"),
    ("v3: q2 of other shape", lambda: mt.moco_v3_loss(q, q[:2], k, k, 0.2), ValueError, "q2: expected shape (4, 8)"),
    ("v3: k1 float64", lambda: mt.moco_v3_loss(q, q, k.double(), k, 0.2), TypeError, "k1: expected dtype float32"),
    ("v3: T NaN", lambda: mt.moco_v3_loss(q, q, k, k, math.nan), ValueError, "temperature"),
    ("enqueue: ptr = K", lambda: mt.enqueue_(queue.clone(), k, 16), ValueError, "0 <= ptr < K = 16, got 16"),
    ("enqueue: ptr < 0", lambda: mt.enqueue_(queue.clone(), k, -1), ValueError, "got -1"),
    ("enqueue: ptr a float", lambda: mt.enqueue_(queue.clone(), k, 1.5), TypeError, "ptr: expected a Python int, got float"),
    ("enqueue: N > K", lambda: mt.enqueue_(queue[:2].clone(), k, 0), ValueError, "N <= K = 2"),
    ("enqueue: keys of other C", lambda: mt.enqueue_(queue.clone(), torch.randn(4, 3), 0), ValueError, "queue: expected shape (K, 3)"),
    ("ema: m = 1.5", lambda: mt.ema_([q.clone()], [k], 1.5), ValueError, "m: expected a momentum in [0, 1], got 1.5"),
    ("ema: m < 0", lambda: mt.ema_([q.clone()], [k], -0.01), ValueError, "[0, 1]"),
    ("ema: m NaN", lambda: mt.ema_([q.clone()], [k], math.nan), ValueError, "got nan"),
    ("ema: m a tensor", lambda: mt.ema_([q.clone()], [k], torch.tensor(0.9)), TypeError, "m: expected a Python float"),
    ("ema: lists of other lengths", lambda: mt.ema_([q.clone(), q.clone()], [k], 0.9), ValueError, "same length, got 2 and 1"),
    ("ema: shapes differ", lambda: mt.ema_([q.clone()], [k[:3]], 0.9), ValueError, "same shape, got (4, 8) and (3, 8)"),
    ("ema: the same tensor twice", lambda: mt.ema_([q], [q], 0.9), ValueError, "same memory twice"),
    ("ema: float64 parameter", lambda: mt.ema_([q.double()], [k.double()], 0.9), TypeError, "params_k[0]: expected dtype float32"),
    ("ema: on another device", lambda: mt.ema_([meta], [k], 0.9), ValueError, "params_k[0]: expected a CPU or CUDA tensor"),
    ("ema: q on another device than k", lambda: mt.ema_([q.clone()], [meta], 0.9), ValueError, "params_q[0]: expected a tensor on cpu"),
    ("ema: a later pair on another device", lambda: mt.ema_([q.clone(), meta], [k, meta], 0.9), ValueError, "params_k[1]: expected a tensor on cpu"),
    ("MoCoLoss: K = 0", lambda: mt.MoCoLoss(K=0, dim=8), ValueError, "positive ints"),
    ("MoCoLoss: float64 queue", lambda: mt.MoCoLoss(K=8, dim=8, dtype=torch.float64), TypeError, "float32, float16 or bfloat16"),
    ("MoCoLoss: T = 0", lambda: mt.MoCoLoss(K=8, dim=8, T=0), ValueError, "T > 0"),
]


@pytest.mark.parametrize("what,call,exc,text", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_raises(what, call, exc, text):
    with pytest.raises(exc) as info:
        call()
    assert text in str(info.value), f"{what}: {info.value}"


def test_without_a_driver_cuda_status_says_why_and_the_cuda_entry_points_raise():
    ok, why = mt.cuda_status()
    if ok:
        pytest.skip(f"this machine runs CUDA ({why}): test_cuda.py covers it")
    assert why, "cuda_status gives a reason"
    if mt._native.HAS_CUDA:
        # the native CUDA entry point itself, as a CUDA tensor would reach it: no driver is a ValueError, no crash
        with pytest.raises(ValueError, match="libcuda|CUDA"):
            mt._native.infonce_cuda(0, 0, 1, 1, 1, 0, 1, 1, 1, 0.2, 1, 1, 1)
        with pytest.raises(ValueError, match="libcuda|CUDA"):
            mt._native.ema_cuda(0, 0, [(1, 2, 1)], 0.9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device in this PyTorch")
def test_a_cuda_tensor_without_cuda_in_moco_torch_says_why():
    if mt.cuda_status()[0]:
        pytest.skip("moco_torch runs CUDA here: test_cuda.py covers CUDA tensors")
    with pytest.raises(ValueError, match="CUDA available, got one on cuda"):
        mt.infonce(q.cuda(), k.cuda(), queue.cuda(), 0.2)


def test_nothing_was_written_by_a_refused_call():
    qq = queue.clone()
    with pytest.raises(ValueError):
        mt.enqueue_(qq, torch.randn(4, 8), 16)
    assert torch.equal(qq, queue)
