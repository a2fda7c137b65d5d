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

This build runs the CPU kernels. A CUDA tensor raises ``ValueError``: the extension is built without CUDA.
"""

import math
from typing import List, NamedTuple, Sequence

import torch

from . import _native

__all__ = [
    "InfoNCEResult",
    "MoCoLoss",
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


def _tensor(name, t, dtypes=(torch.float32,), ndim=None):
    """Checks that `t` is a contiguous CPU tensor of one of `dtypes` with `ndim` dimensions."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        want = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype {want}, got {str(t.dtype).replace('torch.', '')}")
    if t.device.type != "cpu":
        raise ValueError(
            f"{name}: expected a CPU tensor, got one on {t.device}: this build of moco_torch runs the CPU kernels "
            "only (it has no CUDA); move the tensors with .cpu() or use PyTorch's own ops on the GPU"
        )
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (call .contiguous()), got strides {t.stride()} for shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(t.shape)}")
    return t


def _temperature(t):
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"temperature: expected a Python float, got {type(t).__name__}")
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature: expected a finite T > 0, got {t}")
    return float(t)


def _rows(name, t, n, c):
    if tuple(t.shape) != (n, c):
        raise ValueError(f"{name}: expected shape ({n}, {c}) (as q), got {tuple(t.shape)}")


def _queue(queue, c):
    _tensor("queue", queue, tuple(_QUEUE_DTYPES), ndim=2)
    if queue.shape[1] != c:
        raise ValueError(
            f"queue: expected shape (K, {c}) (the crate's [K, C] layout, one key per row), got {tuple(queue.shape)}; "
            "an official [C, K] queue converts with queue_from_official"
        )
    return queue.shape[0], _QUEUE_DTYPES[queue.dtype]


class InfoNCEResult(NamedTuple):
    """The mean InfoNCE loss (a 0-dim tensor with a gradient for q) and the acc@1 / acc@5 counts (ints)."""

    loss: torch.Tensor
    top1: int
    top5: int


def _infonce_native(q, k, queue, t):
    """(loss, top1, top5, dq) of the checked tensors."""
    n, c = q.shape
    kk, code = _queue(queue, c)
    dq = torch.empty_like(q)
    row_loss = torch.empty(n, dtype=torch.float32)
    loss, top1, top5 = _native.infonce(q.data_ptr(), k.data_ptr(), queue.data_ptr(), code, n, c, kk, t, dq.data_ptr(), row_loss.data_ptr())
    return loss, top1, top5, dq


class _InfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, queue, temperature):
        loss, top1, top5, dq = _infonce_native(q, k, queue, temperature)
        ctx.save_for_backward(dq)
        ctx.counts = (top1, top5)
        return torch.tensor(loss, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_loss):
        (dq,) = ctx.saved_tensors
        return grad_loss * dq, None, None, None


def infonce(q, k, queue, temperature=0.07):
    """MoCo's InfoNCE, fused: ``CrossEntropy(cat([q̂·k̂, q̂·queueᵀ]) / T, 0)`` averaged over the batch, forward and
    backward in one pass that never forms the N × (1 + K) logits. ``q, k: [N, C]`` float32 raw encoder outputs
    (normalised inside, as ``F.normalize``), ``queue: [K, C]`` (float32, float16 or bfloat16; K >= N), T > 0.
    Only q gets a gradient (MoCo's stop-gradient on the keys and the queue)."""
    _tensor("q", q, ndim=2)
    n, c = q.shape
    _tensor("k", k, ndim=2)
    _rows("k", k, n, c)
    kk, _ = _queue(queue, c)
    if n > kk:
        raise ValueError(f"queue: expected K >= N = {n} keys, got K = {kk}")
    t = _temperature(temperature)
    if torch.is_grad_enabled() and q.requires_grad:
        loss = _InfoNCE.apply(q, k.detach(), queue.detach(), t)
        # the counts come from the same kernel call, kept on the autograd node
        return InfoNCEResult(loss, *loss.grad_fn.counts)
    loss, top1, top5, _ = _infonce_native(q.detach(), k.detach(), queue.detach(), t)
    return InfoNCEResult(torch.tensor(loss, dtype=torch.float32), top1, top5)


def logits(q, k, queue, temperature=None):
    """The materialised logits of the official code: ``(l_pos [N, 1], l_neg [N, K])`` cosines of the normalised q, k
    against the queue, divided by T when given. No gradient (use ``infonce`` to train)."""
    _tensor("q", q, ndim=2)
    n, c = q.shape
    _tensor("k", k, ndim=2)
    _rows("k", k, n, c)
    kk, code = _queue(queue, c)
    l_pos = torch.empty(n, dtype=torch.float32)
    l_neg = torch.empty(n, kk, dtype=torch.float32)
    _native.logits(q.data_ptr(), k.data_ptr(), queue.data_ptr(), code, n, c, kk, l_pos.data_ptr(), l_neg.data_ptr())
    if temperature is not None:
        t = _temperature(temperature)
        l_pos /= t
        l_neg /= t
    return l_pos.unsqueeze(1), l_neg


class V3Result(NamedTuple):
    """MoCo v3's loss (a 0-dim tensor with gradients for q1 and q2) and the in-batch acc@1 / acc@5 counts of
    ``ctr(q1, k2)`` and ``ctr(q2, k1)``."""

    loss: torch.Tensor
    counts: List[int]


def _v3_native(q1, q2, k1, k2, t):
    """(loss, counts, dq1, dq2) of the checked tensors."""
    n, c = q1.shape
    dq1, dq2 = torch.empty_like(q1), torch.empty_like(q2)
    loss, counts = _native.moco_v3_loss(q1.data_ptr(), q2.data_ptr(), k1.data_ptr(), k2.data_ptr(), n, c, t, dq1.data_ptr(), dq2.data_ptr())
    return loss, list(counts), dq1, dq2


class _V3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q1, q2, k1, k2, temperature):
        loss, counts, dq1, dq2 = _v3_native(q1, q2, k1, k2, temperature)
        ctx.save_for_backward(dq1, dq2)
        ctx.counts = counts
        return torch.tensor(loss, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_loss):
        dq1, dq2 = ctx.saved_tensors
        return grad_loss * dq1, grad_loss * dq2, None, None, None


def moco_v3_loss(q1, q2, k1, k2, temperature=1.0):
    """moco-v3's ``contrastive_loss(q1, k2) + contrastive_loss(q2, k1)``, each ``CE(q̂ k̂ᵀ / T, arange(N)) · 2T``,
    fused. All ``[N, C]`` float32 raw outputs (q: the predictor's, k: the momentum encoder's); only q1 and q2 get
    gradients."""
    _tensor("q1", q1, ndim=2)
    n, c = q1.shape
    for name, t in (("q2", q2), ("k1", k1), ("k2", k2)):
        _tensor(name, t, ndim=2)
        _rows(name, t, n, c)
    t = _temperature(temperature)
    if torch.is_grad_enabled() and (q1.requires_grad or q2.requires_grad):
        loss = _V3.apply(q1, q2, k1.detach(), k2.detach(), t)
        return V3Result(loss, loss.grad_fn.counts)
    loss, counts, _, _ = _v3_native(q1.detach(), q2.detach(), k1.detach(), k2.detach(), t)
    return V3Result(torch.tensor(loss, dtype=torch.float32), counts)


def enqueue_(queue, keys, ptr):
    """MoCo's ``_dequeue_and_enqueue``: writes the L2-normalised ``keys: [N, C]`` into ``queue: [K, C]`` from row
    ``ptr`` on, wrapping around the end (any N <= K); returns the new pointer ``(ptr + N) % K``. In place, no
    gradient."""
    _tensor("keys", keys, ndim=2)
    n, c = keys.shape
    kk, code = _queue(queue, c)
    if isinstance(ptr, torch.Tensor):
        ptr = int(ptr)
    if isinstance(ptr, bool) or not isinstance(ptr, int):
        raise TypeError(f"ptr: expected a Python int, got {type(ptr).__name__}")
    if not 0 <= ptr < kk:
        raise ValueError(f"ptr: expected 0 <= ptr < K = {kk}, got {ptr}")
    if n > kk:
        raise ValueError(f"keys: expected N <= K = {kk} keys, got N = {n}")
    with torch.no_grad():
        return _native.enqueue(queue.data_ptr(), code, kk, c, keys.detach().data_ptr(), n, ptr)


def _param_pairs(params_k, params_q, distinct):
    """`(k_ptr, q_ptr, numel)` of two equally long lists of checked float32 tensors of equal shapes (`distinct`: the
    two sides of a pair must not share memory)."""
    params_k, params_q = list(params_k), list(params_q)
    if len(params_k) != len(params_q):
        raise ValueError(f"params_k, params_q: expected lists of the same length, got {len(params_k)} and {len(params_q)}")
    pairs = []
    for i, (pk, pq) in enumerate(zip(params_k, params_q)):
        _tensor(f"params_k[{i}]", pk)
        _tensor(f"params_q[{i}]", pq)
        if pk.shape != pq.shape:
            raise ValueError(f"params_k[{i}], params_q[{i}]: expected the same shape, got {tuple(pk.shape)} and {tuple(pq.shape)}")
        if distinct and pk.data_ptr() == pq.data_ptr():
            raise ValueError(f"params_k[{i}], params_q[{i}]: expected two tensors, got the same memory twice")
        pairs.append((pk.data_ptr(), pq.data_ptr(), pk.numel()))
    return pairs


def ema_(params_k: Sequence[torch.Tensor], params_q: Sequence[torch.Tensor], m: float):
    """The momentum update of the official code, ``param_k = param_k * m + param_q * (1. - m)``, over two lists of
    float32 tensors (or ``nn.Parameter``), in place, as one multi-tensor call. m is a Python float in [0, 1]."""
    if isinstance(m, bool) or not isinstance(m, (int, float)):
        raise TypeError(f"m: expected a Python float, got {type(m).__name__}")
    if not (math.isfinite(m) and 0.0 <= m <= 1.0):
        raise ValueError(f"m: expected a momentum in [0, 1], got {m}")
    pairs = _param_pairs(params_k, params_q, distinct=True)
    if pairs:
        with torch.no_grad():
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
    statistics at temperature 1, and RankMe's effective rank of q̂. No gradient."""
    _tensor("q", q, ndim=2)
    n, c = q.shape
    _tensor("k", k, ndim=2)
    _rows("k", k, n, c)
    with torch.no_grad():
        qh = torch.nn.functional.normalize(q.detach(), dim=1).contiguous()
        kh = torch.nn.functional.normalize(k.detach(), dim=1).contiguous()
        if queue is None:
            stats, rank = _native.health(qh.data_ptr(), kh.data_ptr(), 0, 0, n, c, 0)
        else:
            kk, code = _queue(queue, c)
            stats, rank = _native.health(qh.data_ptr(), kh.data_ptr(), queue.data_ptr(), code, n, c, kk)
    return Health(*stats, rank)


def key_drift(params_k: Sequence[torch.Tensor], params_q: Sequence[torch.Tensor]):
    """The key encoder's drift ``‖θ_k − θ_q‖ / ‖θ_q‖`` over two lists of float32 parameter tensors (f64 sums)."""
    return _native.param_drift(_param_pairs(params_k, params_q, distinct=False))


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

    The queue (``[K, dim]``, the crate's layout) and its pointer are buffers, saved in ``state_dict``. It starts as
    the official code's ``F.normalize(torch.randn(dim, K), dim=0)``, transposed."""

    def __init__(self, K=4096, dim=128, T=0.1, dtype=torch.float32):
        super().__init__()
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
        r = infonce(q, k, self.queue, self.T)
        self.top1, self.top5 = r.top1, r.top5
        return r.loss

    @torch.no_grad()
    def enqueue(self, keys):
        """Writes the (normalised) keys at the pointer, wrapping; advances the pointer."""
        self.queue_ptr[0] = enqueue_(self.queue, keys.detach(), int(self.queue_ptr))
