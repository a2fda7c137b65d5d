"""The CUDA half of moco_torch's extension (`_native.*_cuda`), on the emulated CUDA driver (tests/cuda_emu/README.md),
as PyTorch would drive it: device memory and streams that someone else owns, raw addresses and a raw CUstream.

Run in a process of its own by test_cuda_emulated.py (this module loads the emulated libcuda.so before anything
can load a driver). The driver and kernel libraries are the ones `cargo test` built and installed last
(`target/tmp/cuda_emu/installed.txt`, or MOCO_CUDA_EMU_MANIFEST).

What PyTorch's CUDA tensors add on a GPU (data_ptr(), torch.cuda.current_stream()) is checked by test_cuda.py on a
lent GPU; here the same native calls get addresses from cuMemAlloc and streams from cuStreamCreate.
"""

import ctypes
import os
import pathlib
from ctypes import POINTER, byref, c_int, c_size_t, c_uint, c_uint64, c_void_p

ROOT = pathlib.Path(__file__).resolve().parents[2]
MANIFEST = pathlib.Path(os.environ.get("MOCO_CUDA_EMU_MANIFEST") or ROOT / "target/tmp/cuda_emu/installed.txt")
_lines = MANIFEST.read_text().split("\n")
drv = ctypes.CDLL(_lines[0], mode=ctypes.RTLD_GLOBAL)  # before anything dlopens "libcuda.so"
drv.moco_emu_configure.argtypes = [ctypes.c_char_p]
drv.moco_emu_log.restype = ctypes.c_char_p
drv.moco_emu_launch_counts.restype = ctypes.c_char_p
assert drv.moco_emu_configure("\n".join(l for l in _lines[1:] if l).encode() + b"\n") == 0, drv.moco_emu_log()

import pytest  # noqa: E402
import torch  # noqa: E402

import moco_torch as mt  # noqa: E402
from moco_torch import _native  # noqa: E402
from test_ops import DTYPES, assert_close, counts, official_ctr, official_infonce, unit_queue  # noqa: E402

for name, args in {
    "cuInit": [c_uint],
    "cuDeviceGet": [POINTER(c_int), c_int],
    "cuDevicePrimaryCtxRetain": [POINTER(c_void_p), c_int],
    "cuCtxSetCurrent": [c_void_p],
    "cuCtxGetCurrent": [POINTER(c_void_p)],
    "cuMemAlloc_v2": [POINTER(c_uint64), c_size_t],
    "cuMemFree_v2": [c_uint64],
    "cuMemcpyHtoD_v2": [c_uint64, c_void_p, c_size_t],
    "cuMemcpyDtoH_v2": [c_void_p, c_uint64, c_size_t],
    "cuMemcpyHtoDAsync_v2": [c_uint64, c_void_p, c_size_t, c_void_p],
    "cuStreamCreate": [POINTER(c_void_p), c_uint],
    "cuStreamSynchronize": [c_void_p],
}.items():
    getattr(drv, name).argtypes = args

CU_STREAM_NON_BLOCKING = 1


def check(rc, what="driver call"):
    assert rc == 0, f"{what}: CUresult {rc}; emulator log:\n{drv.moco_emu_log().decode()}"


def primary_context():
    check(drv.cuInit(0))
    dev, ctx = c_int(), c_void_p()
    check(drv.cuDeviceGet(byref(dev), 0))
    check(drv.cuDevicePrimaryCtxRetain(byref(ctx), dev.value))
    return ctx


CTX = primary_context()


def current_context():
    ctx = c_void_p()
    check(drv.cuCtxGetCurrent(byref(ctx)))
    return ctx.value


class DeviceTensor:
    """A device allocation holding a tensor's bytes, as a CUDA tensor would (shape and dtype kept on the host)."""

    def __init__(self, shape, dtype):
        check(drv.cuCtxSetCurrent(CTX))
        self.shape, self.dtype = tuple(shape), dtype
        self.nbytes = torch.empty(self.shape, dtype=dtype).nbytes
        self.ptr = c_uint64()
        check(drv.cuMemAlloc_v2(byref(self.ptr), self.nbytes), "cuMemAlloc")  # filled with 0xFF: NaN as f32

    @classmethod
    def of(cls, t, stream=None):
        """A copy of the CPU tensor `t` (synchronous, or queued on `stream`)."""
        t = t.detach().contiguous()
        d = cls(t.shape, t.dtype)
        if stream is None:
            check(drv.cuMemcpyHtoD_v2(d.ptr, t.data_ptr(), d.nbytes))
        else:
            d._host = t  # kept alive until the stream ran the copy
            check(drv.cuMemcpyHtoDAsync_v2(d.ptr, t.data_ptr(), d.nbytes, stream))
        return d

    @property
    def addr(self):
        return self.ptr.value

    def cpu(self):
        """The bytes back as a CPU tensor (a synchronous copy on the legacy stream)."""
        out = torch.empty(self.shape, dtype=self.dtype)
        check(drv.cuMemcpyDtoH_v2(out.data_ptr(), self.ptr, self.nbytes))
        return out

    def __del__(self):
        if hasattr(self, "ptr"):
            drv.cuMemFree_v2(self.ptr)


def launches():
    """Kernel launches that ran so far, per kernel."""
    return {k: int(n) for k, n in (line.split(" ") for line in drv.moco_emu_launch_counts().decode().splitlines() if line)}


def emu_log():
    return drv.moco_emu_log().decode()


def infonce_cuda(q, k, queue, T, stream=0):
    """The native CUDA InfoNCE on device copies: (loss, top1, top5, dq, row_loss) read back on the host."""
    n, c = q.shape
    kk = queue.shape[0]
    dq, row_loss, stats = DeviceTensor((n, c), torch.float32), DeviceTensor((n,), torch.float32), DeviceTensor((4,), torch.int32)
    dev = [DeviceTensor.of(t) for t in (q, k, queue)]
    code = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[queue.dtype]
    _native.infonce_cuda(0, stream, dev[0].addr, dev[1].addr, dev[2].addr, code, n, c, kk, T, dq.addr, row_loss.addr, stats.addr)
    words = stats.cpu()
    return words[0:1].view(torch.float32).item(), int(words[1]), int(words[2]), dq.cpu(), row_loss.cpu()


def test_cuda_status_names_the_emulated_device_and_keeps_the_current_context():
    check(drv.cuCtxSetCurrent(None))
    ok, name = _native.cuda_status()
    assert ok and name.startswith("cuda:0"), name
    assert current_context() is None
    assert mt.cuda_status() == (ok, name)


SHAPES = [(1, 7, 33), (2, 1, 3), (8, 17, 64), (16, 128, 1000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,kk", SHAPES)
def test_infonce_matches_the_official_formulation(n, c, kk, dtype):
    T = 0.2
    g = torch.Generator().manual_seed(n * 1000 + c + kk)
    q = torch.randn(n, c, generator=g, requires_grad=True)
    key = torch.randn(n, c, generator=g)
    queue = unit_queue(kk, c, dtype, n + c)
    want, logits = official_infonce(q, key, queue, T)
    (want_grad,) = torch.autograd.grad(want, q)
    loss, top1, top5, dq, row_loss = infonce_cuda(q, key, queue, T)
    assert abs(loss - want.item()) <= 1e-5 * abs(want.item()), (loss, want.item())
    assert_close("dq", dq, want_grad, 1e-5)
    assert (top1, top5) == counts(logits, torch.zeros(n, dtype=torch.long))
    assert abs(row_loss.mean().item() - want.item()) <= 1e-5 * abs(want.item())


@pytest.mark.parametrize("dtype,u", [(torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-11), (torch.float32, 2.0**-7 + 2.0**-16)])
def test_half_precision_runs_the_tensor_cores_within_its_bound(dtype, u):
    """precision_code 1 (``precision="half"``): the tensor-core pass for a 16-bit queue (a float32 queue rounded to
    bf16 first), the loss within 2 delta / T of the official formulation (delta = u + (C + 8) 2^-22 per cosine, u the
    relative bound of moco::Precision::cosine_bound)."""
    n, c, kk, T = 20, 64, 300, 0.1
    g = torch.Generator().manual_seed(5)
    q, key, queue = torch.randn(n, c, generator=g), torch.randn(n, c, generator=g), unit_queue(kk, c, dtype, 6)
    want, _ = official_infonce(q, key, queue, T)
    dev = [DeviceTensor.of(t) for t in (q, key, queue)]
    dq, row_loss, stats = DeviceTensor((n, c), torch.float32), DeviceTensor((n,), torch.float32), DeviceTensor((4,), torch.int32)
    kernel = "infonce_partial_mma_" + ("f16" if dtype == torch.float16 else "bf16")
    before = launches().get(kernel, 0)
    code = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[dtype]
    _native.infonce_cuda(0, 0, dev[0].addr, dev[1].addr, dev[2].addr, code, n, c, kk, T, dq.addr, row_loss.addr, stats.addr, 1)
    loss = stats.cpu()[0:1].view(torch.float32).item()
    assert launches().get(kernel, 0) == before + 1, "the tensor-core pass ran"
    bound = 2 * (u * 1.01 + (c + 8) * 2.0**-22) / T
    assert abs(loss - want.item()) <= bound, (loss, want.item(), bound)
    with pytest.raises(ValueError, match="precision code"):
        _native.infonce_cuda(0, 0, dev[0].addr, dev[1].addr, dev[2].addr, code, n, c, kk, T, dq.addr, row_loss.addr, stats.addr, 9)


@pytest.mark.parametrize("code,kernel,relative", [(2, "infonce_partial_mma_tf32x3", 3 * 2.0**-20 + (36 + 2) * 2.0**-23), (3, "infonce_partial_mma_tf32", 2 * 2.0**-11 + 2.0**-22 + (36 + 2) * 2.0**-23)])
def test_tf32_precisions_run_the_tensor_cores_within_their_bound(code, kernel, relative):
    """precision codes 2 (``"tf32x3"``) and 3 (``"tf32"``): a float32 queue on the TF32 tensor-core pass (C = 36: a
    multiple of 4, not of 8), the loss within 2 delta / T of the official formulation (delta = relative + (C + 8)
    2^-22 per cosine, moco::Precision::cosine_bound of a unit key)."""
    n, c, kk, T = 20, 36, 300, 0.1
    g = torch.Generator().manual_seed(7)
    q, key, queue = torch.randn(n, c, generator=g), torch.randn(n, c, generator=g), unit_queue(kk, c, torch.float32, 8)
    want, _ = official_infonce(q, key, queue, T)
    dev = [DeviceTensor.of(t) for t in (q, key, queue)]
    dq, row_loss, stats = DeviceTensor((n, c), torch.float32), DeviceTensor((n,), torch.float32), DeviceTensor((4,), torch.int32)
    before = launches().get(kernel, 0)
    _native.infonce_cuda(0, 0, dev[0].addr, dev[1].addr, dev[2].addr, 0, n, c, kk, T, dq.addr, row_loss.addr, stats.addr, code)
    loss = stats.cpu()[0:1].view(torch.float32).item()
    assert launches().get(kernel, 0) == before + 1, "the tensor-core pass ran"
    bound = 2 * (relative * 1.01 + (c + 8) * 2.0**-22) / T
    assert abs(loss - want.item()) <= bound, (loss, want.item(), bound)


def test_logits_match_the_official_formulation():
    n, c, kk = 5, 9, 37
    q, key, queue = torch.randn(n, c), torch.randn(n, c), unit_queue(kk, c, torch.bfloat16, 3)
    _, want = official_infonce(q, key, queue, 1.0)
    dev = [DeviceTensor.of(t) for t in (q, key, queue)]
    l_pos, l_neg = DeviceTensor((n,), torch.float32), DeviceTensor((n, kk), torch.float32)
    _native.logits_cuda(0, 0, dev[0].addr, dev[1].addr, dev[2].addr, 2, n, c, kk, l_pos.addr, l_neg.addr)
    assert_close("logits", torch.cat([l_pos.cpu().unsqueeze(1), l_neg.cpu()], dim=1), want, 1e-5)


@pytest.mark.parametrize("n,c", [(1, 3), (6, 17), (32, 64)])
def test_moco_v3_loss_matches_the_official_formulation(n, c):
    T = 0.2
    g = torch.Generator().manual_seed(n + c)
    q1, q2 = torch.randn(n, c, generator=g, requires_grad=True), torch.randn(n, c, generator=g, requires_grad=True)
    k1, k2 = torch.randn(n, c, generator=g), torch.randn(n, c, generator=g)
    (a, la), (b, lb) = official_ctr(q1, k2, T), official_ctr(q2, k1, T)
    want = a + b
    want_g1, want_g2 = torch.autograd.grad(want, [q1, q2])
    dev = [DeviceTensor.of(t) for t in (q1, q2, k1, k2)]
    dq1, dq2, stats = DeviceTensor((n, c), torch.float32), DeviceTensor((n, c), torch.float32), DeviceTensor((8,), torch.int32)
    _native.moco_v3_loss_cuda(0, 0, *(d.addr for d in dev), n, c, T, dq1.addr, dq2.addr, stats.addr)
    words = stats.cpu()
    loss = words[0:1].view(torch.float32).item() + words[4:5].view(torch.float32).item()
    assert abs(loss - want.item()) <= 1e-5 * abs(want.item()), (loss, want.item())
    assert_close("dq1", dq1.cpu(), want_g1, 1e-5)
    assert_close("dq2", dq2.cpu(), want_g2, 1e-5)
    target = torch.arange(n)
    assert [int(words[i]) for i in (1, 2, 5, 6)] == [*counts(la, target), *counts(lb, target)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_enqueue_wraps_around_like_the_cpu_op(dtype):
    kk, c, n, ptr = 10, 5, 7, 6  # rows 6..9 then 0..2
    queue = unit_queue(kk, c, dtype, 4)
    keys = torch.randn(n, c)
    want = queue.clone()
    assert mt.enqueue_(want, keys, ptr) == (ptr + n) % kk
    dq, dkeys = DeviceTensor.of(queue), DeviceTensor.of(keys)  # (alive until the queued work ran)
    new_ptr = _native.enqueue_cuda(0, 0, dq.addr, {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[dtype], kk, c, dkeys.addr, n, ptr)
    assert new_ptr == (ptr + n) % kk
    got = dq.cpu()
    assert torch.equal(got[3:6], queue[3:6])  # untouched rows
    assert_close("queue", got.float(), want.float(), 1e-6 if dtype == torch.float32 else 1e-2)


def test_ema_over_a_list_is_bit_identical_to_the_official_update():
    m = 0.999
    shapes = [(3,), (64, 3, 3, 3), (1000,), (5, 7)]
    ks = [torch.randn(s) for s in shapes]
    qs = [torch.randn(s) for s in shapes]
    want = [pk * m + pq * (1.0 - m) for pk, pq in zip(ks, qs)]
    dk, dq = [DeviceTensor.of(t) for t in ks], [DeviceTensor.of(t) for t in qs]
    before = launches().get("ema_multi_tensor", 0)
    _native.ema_cuda(0, 0, [(a.addr, b.addr, t.numel()) for a, b, t in zip(dk, dq, ks)], m)
    for d, w in zip(dk, want):
        assert torch.equal(d.cpu(), w)
    assert launches().get("ema_multi_tensor", 0) == before + 1, "one multi-tensor launch for the whole list"


def test_work_queued_on_a_foreign_stream_runs_in_its_order_with_no_synchronisation():
    """PyTorch's case: inputs copied in on a non-default stream, then the op on the same stream, nothing waited on.
    The emulator runs queued work only when the host waits, and reports an access that a stream does not order."""
    stream = c_void_p()
    check(drv.cuCtxSetCurrent(CTX))
    check(drv.cuStreamCreate(byref(stream), CU_STREAM_NON_BLOCKING))
    n, c, kk, T = 8, 33, 100, 0.1
    q, key, queue = torch.randn(n, c), torch.randn(n, c), unit_queue(kk, c, torch.float16, 9)
    want, _ = official_infonce(q, key, queue, T)
    dev = [DeviceTensor.of(t, stream=stream.value) for t in (q, key, queue)]  # queued copies on the stream
    dq, row_loss, stats = DeviceTensor((n, c), torch.float32), DeviceTensor((n,), torch.float32), DeviceTensor((4,), torch.int32)
    before = launches()
    _native.infonce_cuda(0, stream.value, dev[0].addr, dev[1].addr, dev[2].addr, 1, n, c, kk, T, dq.addr, row_loss.addr, stats.addr)
    assert launches() == before, "the op waited for its kernels (a synchronisation inside the call)"
    check(drv.cuStreamSynchronize(stream), "cuStreamSynchronize")
    ran = {k: v - before.get(k, 0) for k, v in launches().items() if v != before.get(k, 0)}
    assert ran.get("infonce_partial_c128_f16", 0) >= 1 and ran.get("infonce_reduce") == 1, ran
    loss = stats.cpu()[0:1].view(torch.float32).item()
    assert abs(loss - want.item()) <= 1e-5 * abs(want.item())
    assert emu_log() == "", emu_log()


def test_the_threads_current_context_is_put_back():
    q, key, queue = torch.randn(2, 4), torch.randn(2, 4), unit_queue(4, 4, torch.float32, 1)
    check(drv.cuCtxSetCurrent(None))
    dev = [DeviceTensor.of(t) for t in (q, key, queue)]  # (sets the context current again)
    check(drv.cuCtxSetCurrent(None))
    out = [DeviceTensor((2, 4), torch.float32), DeviceTensor((2,), torch.float32), DeviceTensor((4,), torch.int32)]
    check(drv.cuCtxSetCurrent(None))
    _native.infonce_cuda(0, 0, dev[0].addr, dev[1].addr, dev[2].addr, 0, 2, 4, 4, 0.5, *(d.addr for d in out))
    assert current_context() is None, "the call left its context current on a thread that had none"
    check(drv.cuCtxSetCurrent(CTX))
    _native.infonce_cuda(0, 0, dev[0].addr, dev[1].addr, dev[2].addr, 0, 2, 4, 4, 0.5, *(d.addr for d in out))
    assert current_context() == CTX.value


def test_shape_errors_are_value_errors_and_leave_the_device_usable():
    q = DeviceTensor.of(torch.randn(4, 8))
    out = [DeviceTensor((4, 8), torch.float32), DeviceTensor((4,), torch.float32), DeviceTensor((4,), torch.int32)]
    with pytest.raises(ValueError, match="K >= batch N = 4, got K = 2"):
        _native.infonce_cuda(0, 0, q.addr, q.addr, q.addr, 0, 4, 8, 2, 0.2, *(o.addr for o in out))
    with pytest.raises(ValueError, match="temperature"):
        _native.infonce_cuda(0, 0, q.addr, q.addr, q.addr, 0, 4, 8, 4, 0.0, *(o.addr for o in out))
    with pytest.raises(ValueError, match="queue dtype code"):
        _native.infonce_cuda(0, 0, q.addr, q.addr, q.addr, 7, 4, 8, 4, 0.2, *(o.addr for o in out))
    with pytest.raises(ValueError, match="0 <= ptr|ptr"):
        _native.enqueue_cuda(0, 0, q.addr, 0, 4, 8, q.addr, 2, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _native.ema_cuda(0, 0, [(out[0].addr, q.addr, 32)], 1.5)
    # the borrowed buffers were handed back, not freed: still readable, and a valid call still works
    assert q.cpu().isfinite().all()
    _native.infonce_cuda(0, 0, q.addr, q.addr, q.addr, 0, 4, 8, 4, 0.2, *(o.addr for o in out))
    assert out[1].cpu().isfinite().all()
    assert emu_log() == "", emu_log()


def test_no_device_of_that_ordinal_is_a_value_error():
    with pytest.raises(ValueError, match="no CUDA device 3"):
        _native.logits_cuda(3, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1)
