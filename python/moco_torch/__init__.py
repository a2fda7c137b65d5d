"""moco's fused contrastive ops on PyTorch tensors, zero-copy.

    import moco_torch
    loss = moco_torch.infonce(q, k, queue, temperature=0.2).loss   # q gets a gradient; k and queue do not
    loss.backward()
    ptr = moco_torch.enqueue_(queue, k, ptr)                       # MoCo's _dequeue_and_enqueue, any N <= K

The queue is in the crate's layout ``[K, C]`` (one key per row); ``queue_from_official`` / ``queue_to_official``
convert from and to the official code's ``[C, K]``. Queues may be float32, float16 or bfloat16; everything else is
float32. Every op checks its tensors (device, dtype, contiguity, shape) and raises ``TypeError`` (a wrong type or
dtype) or ``ValueError`` (a wrong device, layout, shape or value) saying what it expected and what it got, before
any memory is touched. Ops read and write the tensors' own memory: nothing is copied.

CPU tensors run the CPU kernels. CUDA tensors run the CUDA kernels on the tensors' device, queued on PyTorch's current
stream of that device (``torch.cuda.current_stream(device)``) with no synchronisation, so they order with PyTorch's
own work like any PyTorch op; the loss and the acc@1 / acc@5 counts then stay on the device (0-dim tensors) until
you read them. The tensors of one call must all be on one device. A CUDA tensor raises ``ValueError`` when the
extension was built without CUDA or the CUDA driver or NVRTC cannot be loaded (``cuda_status()`` says which).
"""

import math
from typing import List, NamedTuple, Sequence, Union

import torch

from . import _native

__all__ = [
    "InfoNCEResult",
    "MoCoLoss",
    "cuda_status",
    "V3Result",
    "ema_",
    "enqueue_",
    "health",
    "key_drift",
    "infonce",
    "logits",
    "moco_v3_loss",
    "queue_from_official",
    "queue_to_official",
]

__version__ = _native.version()

_QUEUE_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


_CUDA_STATUS = None


def cuda_status():
    """``(True, device name)`` when CUDA tensors can run the CUDA kernels, else ``(False, why not)``: the extension
    built without CUDA, or the CUDA driver (libcuda) or NVRTC not loadable, or no device. Never raises."""
    global _CUDA_STATUS
    if _CUDA_STATUS is None:
        _CUDA_STATUS = _native.cuda_status() if _native.HAS_CUDA else (False, "this build of moco_torch has no CUDA (built with --no-default-features)")
    return _CUDA_STATUS


def _check_device(name, t, device):
    """`t` is on `device` (the first tensor's) and that device can run the kernels."""
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (as the first tensor), got one on {t.device}: move the tensors to one device")
    if t.device.type == "cuda":
        ok, why = cuda_status()
        if not ok:
            raise ValueError(f"{name}: expected a CPU tensor or a CUDA tensor with CUDA available, got one on {t.device}, but {why}")
    elif t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU or CUDA tensor, got one on {t.device}")


def _tensor(name, t, dtypes=(torch.float32,), ndim=None, device=None):
    """Checks that `t` is a contiguous tensor of one of `dtypes` with `ndim` dimensions on `device` (any device that
    runs the kernels when None)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        want = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype {want}, got {str(t.dtype).replace('torch.', '')}")
    _check_device(name, t, device)
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (call .contiguous()), got strides {t.stride()} for shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(t.shape)}")
    return t


_PRECISIONS = {"fp32": 0, "half": 1, "tf32x3": 2, "tf32": 3}


def _precision(p):
    """The precision code: "fp32" (default), "tf32x3" or "tf32" (TF32 tensor cores for float32 keys, CUDA tensors), or
    "half" (16-bit operands on the tensor cores for CUDA tensors)."""
    if not isinstance(p, str) or p not in _PRECISIONS:
        raise ValueError(f"precision: expected 'fp32', 'tf32x3', 'tf32' or 'half', got {p!r}")
    return _PRECISIONS[p]


def _temperature(t):
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"temperature: expected a Python float, got {type(t).__name__}")
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature: expected a finite T > 0, got {t}")
    return float(t)


def _stream(device):
    """PyTorch's current stream on the CUDA `device`, as the raw CUstream handle."""
    return torch.cuda.current_stream(device).cuda_stream


def _rows(name, t, n, c):
    if tuple(t.shape) != (n, c):
        raise ValueError(f"{name}: expected shape ({n}, {c}) (as q), got {tuple(t.shape)}")


def _queue(queue, c, device=None):
    _tensor("queue", queue, tuple(_QUEUE_DTYPES), ndim=2, device=device)
    if queue.shape[1] != c:
        raise ValueError(
            f"queue: expected shape (K, {c}) (the crate's [K, C] layout, one key per row), got {tuple(queue.shape)}; "
            "an official [C, K] queue converts with queue_from_official"
        )
    return queue.shape[0], _QUEUE_DTYPES[queue.dtype]


class InfoNCEResult(NamedTuple):
    """The mean InfoNCE loss (a 0-dim tensor with a gradient for q) and the acc@1 / acc@5 counts: ints for CPU
    tensors, 0-dim int32 tensors on the device for CUDA tensors (``int(r.top1)`` waits for the stream)."""

    loss: torch.Tensor
    top1: Union[int, torch.Tensor]
    top5: Union[int, torch.Tensor]


def _infonce_native(q, k, queue, t, precision=0):
    """(loss tensor, top1, top5, dq) of the checked tensors; on CUDA, queued on the current stream."""
    n, c = q.shape
    kk, code = _queue(queue, c, q.device)
    dq = torch.empty_like(q)
    row_loss = torch.empty(n, dtype=torch.float32, device=q.device)
    if q.is_cuda:
        # stats: [loss as f32 bits, acc@1, acc@5, 0], written on the device
        stats = torch.empty(4, dtype=torch.int32, device=q.device)
        _native.infonce_cuda(q.device.index, _stream(q.device), q.data_ptr(), k.data_ptr(), queue.data_ptr(), code, n, c, kk, t, dq.data_ptr(), row_loss.data_ptr(), stats.data_ptr(), precision)
        return stats[0:1].view(torch.float32).reshape(()).clone(), stats[1], stats[2], dq
    loss, top1, top5 = _native.infonce(q.data_ptr(), k.data_ptr(), queue.data_ptr(), code, n, c, kk, t, dq.data_ptr(), row_loss.data_ptr())
    return torch.tensor(loss, dtype=torch.float32), top1, top5, dq


class _InfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, queue, temperature, precision):
        loss, top1, top5, dq = _infonce_native(q, k, queue, temperature, precision)
        ctx.save_for_backward(dq)
        ctx.counts = (top1, top5)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (dq,) = ctx.saved_tensors
        return grad_loss * dq, None, None, None, None


def infonce(q, k, queue, temperature=0.07, precision="fp32"):
    """MoCo's InfoNCE, fused: ``CrossEntropy(cat([q̂·k̂, q̂·queueᵀ]) / T, 0)`` averaged over the batch, forward and
    backward in one pass that never forms the N × (1 + K) logits. ``q, k: [N, C]`` float32 raw encoder outputs
    (normalised inside, as ``F.normalize``), ``queue: [K, C]`` (float32, float16 or bfloat16; K >= N), T > 0.
    Only q gets a gradient (MoCo's stop-gradient on the keys and the queue). ``precision="half"`` lets CUDA tensors
    (C % 8 == 0, C <= 128, sm_80+) run on the tensor cores: q̂ and the softmax weights in an f16/bf16 queue's format,
    or in bf16 with a float32 queue (rounded to bf16 by the call), f32 accumulation, each cosine within 2^-8 (bf16),
    2^-11 (f16) or 2^-7 + 2^-16 (float32 queue) of the exact one (``moco::Precision``); elsewhere it computes in
    f32. ``precision="tf32x3"`` (f32's accuracy: each operand split into two TF32 halves, three products) and
    ``"tf32"`` (10-bit mantissas, PyTorch's ``allow_tf32``) run a float32 queue on the TF32 tensor cores (C % 4 == 0,
    C <= 128, sm_80+); other queues and devices compute in f32."""
    _tensor("q", q, ndim=2)
    n, c = q.shape
    _tensor("k", k, ndim=2, device=q.device)
    _rows("k", k, n, c)
    kk, _ = _queue(queue, c, q.device)
    if n > kk:
        raise ValueError(f"queue: expected K >= N = {n} keys, got K = {kk}")
    t = _temperature(temperature)
    p = _precision(precision)
    if torch.is_grad_enabled() and q.requires_grad:
        loss = _InfoNCE.apply(q, k.detach(), queue.detach(), t, p)
        # the counts come from the same kernel call, kept on the autograd node
        return InfoNCEResult(loss, *loss.grad_fn.counts)
    loss, top1, top5, _ = _infonce_native(q.detach(), k.detach(), queue.detach(), t, p)
    return InfoNCEResult(loss, top1, top5)


def logits(q, k, queue, temperature=None, precision="fp32"):
    """The materialised logits of the official code: ``(l_pos [N, 1], l_neg [N, K])`` cosines of the normalised q, k
    against the queue, divided by T when given. No gradient (use ``infonce`` to train). ``precision="half"``: the
    negatives on the tensor cores for CUDA tensors with C % 8 == 0; ``"tf32x3"`` and ``"tf32"`` for a float32 queue
    with C % 4 == 0, C <= 128 (as ``infonce``)."""
    p = _precision(precision)
    _tensor("q", q, ndim=2)
    n, c = q.shape
    _tensor("k", k, ndim=2, device=q.device)
    _rows("k", k, n, c)
    kk, code = _queue(queue, c, q.device)
    l_pos = torch.empty(n, dtype=torch.float32, device=q.device)
    l_neg = torch.empty(n, kk, dtype=torch.float32, device=q.device)
    args = (q.data_ptr(), k.data_ptr(), queue.data_ptr(), code, n, c, kk, l_pos.data_ptr(), l_neg.data_ptr())
    if q.is_cuda:
        _native.logits_cuda(q.device.index, _stream(q.device), *args, p)
    else:
        _native.logits(*args)
    if temperature is not None:
        t = _temperature(temperature)
        l_pos /= t
        l_neg /= t
    return l_pos.unsqueeze(1), l_neg


class V3Result(NamedTuple):
    """MoCo v3's loss (a 0-dim tensor with gradients for q1 and q2) and the in-batch acc@1 / acc@5 counts of
    ``ctr(q1, k2)`` and ``ctr(q2, k1)`` (ints for CPU tensors, 0-dim int32 device tensors for CUDA ones)."""

    loss: torch.Tensor
    counts: List[Union[int, torch.Tensor]]


def _v3_native(q1, q2, k1, k2, t, precision=0):
    """(loss tensor, counts, dq1, dq2) of the checked tensors; on CUDA, queued on the current stream."""
    n, c = q1.shape
    dq1, dq2 = torch.empty_like(q1), torch.empty_like(q2)
    if q1.is_cuda:
        # stats: the four words [loss bits, acc@1, acc@5, 0] of ctr(q1, k2), then those of ctr(q2, k1)
        stats = torch.empty(8, dtype=torch.int32, device=q1.device)
        _native.moco_v3_loss_cuda(q1.device.index, _stream(q1.device), q1.data_ptr(), q2.data_ptr(), k1.data_ptr(), k2.data_ptr(), n, c, t, dq1.data_ptr(), dq2.data_ptr(), stats.data_ptr(), precision)
        words = stats.view(torch.float32)
        return words[0] + words[4], [stats[1], stats[2], stats[5], stats[6]], dq1, dq2
    loss, counts = _native.moco_v3_loss(q1.data_ptr(), q2.data_ptr(), k1.data_ptr(), k2.data_ptr(), n, c, t, dq1.data_ptr(), dq2.data_ptr())
    return torch.tensor(loss, dtype=torch.float32), list(counts), dq1, dq2


class _V3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q1, q2, k1, k2, temperature, precision):
        loss, counts, dq1, dq2 = _v3_native(q1, q2, k1, k2, temperature, precision)
        ctx.save_for_backward(dq1, dq2)
        ctx.counts = counts
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        dq1, dq2 = ctx.saved_tensors
        return grad_loss * dq1, grad_loss * dq2, None, None, None, None


def moco_v3_loss(q1, q2, k1, k2, temperature=1.0, precision="fp32"):
    """moco-v3's ``contrastive_loss(q1, k2) + contrastive_loss(q2, k1)``, each ``CE(q̂ k̂ᵀ / T, arange(N)) · 2T``,
    fused. All ``[N, C]`` float32 raw outputs (q: the predictor's, k: the momentum encoder's); only q1 and q2 get
    gradients. ``precision="half"``: q̂ and k̂ in bf16 on the tensor cores for CUDA tensors (C % 8 == 0, C <= 128,
    sm_80+), each cosine within about 2^-7 of the exact one; ``"tf32x3"`` and ``"tf32"``: k̂ as float32 on the TF32
    tensor cores (C % 4 == 0, C <= 128, sm_80+); elsewhere f32."""
    _tensor("q1", q1, ndim=2)
    n, c = q1.shape
    for name, t in (("q2", q2), ("k1", k1), ("k2", k2)):
        _tensor(name, t, ndim=2, device=q1.device)
        _rows(name, t, n, c)
    t = _temperature(temperature)
    p = _precision(precision)
    if torch.is_grad_enabled() and (q1.requires_grad or q2.requires_grad):
        loss = _V3.apply(q1, q2, k1.detach(), k2.detach(), t, p)
        return V3Result(loss, loss.grad_fn.counts)
    loss, counts, _, _ = _v3_native(q1.detach(), q2.detach(), k1.detach(), k2.detach(), t, p)
    return V3Result(loss, counts)


def enqueue_(queue, keys, ptr):
    """MoCo's ``_dequeue_and_enqueue``: writes the L2-normalised ``keys: [N, C]`` into ``queue: [K, C]`` from row
    ``ptr`` on, wrapping around the end (any N <= K); returns the new pointer ``(ptr + N) % K``. In place, no
    gradient. ``ptr`` may be an int or a one-element tensor (read on the host, as the official code's
    ``int(self.queue_ptr)``: for a CUDA tensor that waits for the stream)."""
    _tensor("keys", keys, ndim=2)
    n, c = keys.shape
    kk, code = _queue(queue, c, keys.device)
    if isinstance(ptr, torch.Tensor):
        ptr = int(ptr)
    if isinstance(ptr, bool) or not isinstance(ptr, int):
        raise TypeError(f"ptr: expected a Python int, got {type(ptr).__name__}")
    if not 0 <= ptr < kk:
        raise ValueError(f"ptr: expected 0 <= ptr < K = {kk}, got {ptr}")
    if n > kk:
        raise ValueError(f"keys: expected N <= K = {kk} keys, got N = {n}")
    args = (queue.data_ptr(), code, kk, c, keys.detach().data_ptr(), n, ptr)
    with torch.no_grad():
        if keys.is_cuda:
            return _native.enqueue_cuda(keys.device.index, _stream(keys.device), *args)
        return _native.enqueue(*args)


def _param_pairs(params_k, params_q, distinct):
    """`(k_ptr, q_ptr, numel)` of two equally long lists of checked float32 tensors of equal shapes, all on the
    first one's device (`distinct`: the two sides of a pair must not share memory); and that device."""
    params_k, params_q = list(params_k), list(params_q)
    if len(params_k) != len(params_q):
        raise ValueError(f"params_k, params_q: expected lists of the same length, got {len(params_k)} and {len(params_q)}")
    pairs, device = [], None
    for i, (pk, pq) in enumerate(zip(params_k, params_q)):
        _tensor(f"params_k[{i}]", pk, device=device)
        device = pk.device
        _tensor(f"params_q[{i}]", pq, device=device)
        if pk.shape != pq.shape:
            raise ValueError(f"params_k[{i}], params_q[{i}]: expected the same shape, got {tuple(pk.shape)} and {tuple(pq.shape)}")
        if distinct and pk.data_ptr() == pq.data_ptr():
            raise ValueError(f"params_k[{i}], params_q[{i}]: expected two tensors, got the same memory twice")
        pairs.append((pk.data_ptr(), pq.data_ptr(), pk.numel()))
    return pairs, device


def ema_(params_k: Sequence[torch.Tensor], params_q: Sequence[torch.Tensor], m: float):
    """The momentum update of the official code, ``param_k = param_k * m + param_q * (1. - m)``, over two lists of
    float32 tensors (or ``nn.Parameter``), in place, as one multi-tensor call (on CUDA, one launch on the current
    stream). m is a Python float in [0, 1]."""
    if isinstance(m, bool) or not isinstance(m, (int, float)):
        raise TypeError(f"m: expected a Python float, got {type(m).__name__}")
    if not (math.isfinite(m) and 0.0 <= m <= 1.0):
        raise ValueError(f"m: expected a momentum in [0, 1], got {m}")
    pairs, device = _param_pairs(params_k, params_q, distinct=True)
    if pairs:
        with torch.no_grad():
            if device.type == "cuda":
                _native.ema_cuda(device.index, _stream(device), pairs, float(m))
            else:
                _native.ema(pairs, float(m))


class Health(NamedTuple):
    """Representation health of a batch (README, "Representation health"; the definitions are moco::ops::health's)."""

    alignment: float
    uniformity: float
    dim_std: float
    pos_logit: float
    neg_logit_mean: float
    neg_logit_max: float
    neg_row_max_mean: float
    logit_gap: float
    effective_rank: float


def health(q, k, queue=None):
    """The collapse statistics of a batch: ``q, k: [N, C]`` float32 (normalised here, as ``F.normalize``), the
    negatives from ``queue: [K, C]`` (MoCo v1/v2) or, without a queue, the other keys of the batch (MoCo v3).
    Alignment and uniformity (Wang & Isola 2020, uniformity NaN for N = 1), the per-dimension std, the logit
    statistics at temperature 1, and RankMe's effective rank of q̂. No gradient. A diagnostic that runs on the CPU:
    CUDA tensors are copied to the host (which waits for their stream)."""
    _tensor("q", q, ndim=2)
    n, c = q.shape
    _tensor("k", k, ndim=2, device=q.device)
    _rows("k", k, n, c)
    if queue is not None:
        _queue(queue, c, q.device)
    q, k, queue = (None if t is None else t.detach().cpu() for t in (q, k, queue))
    with torch.no_grad():
        qh = torch.nn.functional.normalize(q, dim=1).contiguous()
        kh = torch.nn.functional.normalize(k, dim=1).contiguous()
        if queue is None:
            stats, rank = _native.health(qh.data_ptr(), kh.data_ptr(), 0, 0, n, c, 0)
        else:
            kk, code = _queue(queue, c)
            stats, rank = _native.health(qh.data_ptr(), kh.data_ptr(), queue.data_ptr(), code, n, c, kk)
    return Health(*stats, rank)


def key_drift(params_k: Sequence[torch.Tensor], params_q: Sequence[torch.Tensor]):
    """The key encoder's drift ``‖θ_k − θ_q‖ / ‖θ_q‖`` over two lists of float32 parameter tensors (f64 sums; CUDA
    tensors are copied to the host)."""
    params_k, params_q = list(params_k), list(params_q)
    pairs, device = _param_pairs(params_k, params_q, distinct=False)
    if device is not None and device.type != "cpu":
        params_k, params_q = [p.detach().cpu() for p in params_k], [p.detach().cpu() for p in params_q]
        pairs, _ = _param_pairs(params_k, params_q, distinct=False)
    return _native.param_drift(pairs)


def queue_from_official(queue_ck):
    """An official ``[C, K]`` queue as the crate's ``[K, C]`` (a contiguous copy)."""
    _tensor("queue_ck", queue_ck, tuple(_QUEUE_DTYPES), ndim=2)
    return queue_ck.t().contiguous()


def queue_to_official(queue):
    """The crate's ``[K, C]`` queue as the official ``[C, K]`` (a contiguous copy)."""
    _tensor("queue", queue, tuple(_QUEUE_DTYPES), ndim=2)
    return queue.t().contiguous()


class MoCoLoss(torch.nn.Module):
    """MoCo v1/v2's loss with its queue, for the official ``ModelMoCo``: ``forward(q, k)`` replaces the logits,
    ``cat``, ``/ T`` and ``CrossEntropyLoss`` lines (the mean InfoNCE loss of the raw q, k against the queue, with a
    gradient for q), and ``enqueue(keys)`` replaces the body of ``_dequeue_and_enqueue`` (any N <= K, wrapping).
    Kept apart, as in the official code, so that the symmetric loss enqueues ``cat([k1, k2])`` after both halves.

    ``precision`` is ``infonce``'s ("fp32"; "tf32x3" or "tf32": TF32 tensor cores for a float32 queue on CUDA; or
    "half": tensor cores for CUDA tensors, 16-bit operands).

    The queue (``[K, dim]``, the crate's layout) and its pointer are buffers, saved in ``state_dict``. It starts as
    the official code's ``F.normalize(torch.randn(dim, K), dim=0)``, transposed."""

    def __init__(self, K=4096, dim=128, T=0.1, dtype=torch.float32, precision="fp32"):
        super().__init__()
        _precision(precision)
        self.precision = precision
        if dtype not in _QUEUE_DTYPES:
            raise TypeError(f"dtype: expected float32, float16 or bfloat16, got {dtype}")
        if not (isinstance(K, int) and isinstance(dim, int) and K >= 1 and dim >= 1):
            raise ValueError(f"K, dim: expected positive ints, got K = {K!r}, dim = {dim!r}")
        self.T = _temperature(T)
        queue = torch.nn.functional.normalize(torch.randn(dim, K), dim=0)
        self.register_buffer("queue", queue.t().contiguous().to(dtype))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.top1, self.top5 = 0, 0

    def forward(self, q, k):
        r = infonce(q, k, self.queue, self.T, self.precision)
        self.top1, self.top5 = r.top1, r.top5
        return r.loss

    @torch.no_grad()
    def enqueue(self, keys):
        """Writes the (normalised) keys at the pointer, wrapping; advances the pointer."""
        self.queue_ptr[0] = enqueue_(self.queue, keys.detach(), int(self.queue_ptr))
