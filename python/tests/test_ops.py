"""moco_torch against PyTorch's own formulation of each op (F.normalize, einsum, cat, / T, F.cross_entropy and
autograd), on CPU tensors and, where there is a GPU, CUDA tensors (the `device` fixture, conftest.py): the loss
within 1e-5 relative, q's gradient within 1e-5 of its largest element, every queue dtype, N = 1, odd C, wrap-around
enqueue, and the EMA bit-identical to the official update. The references run on the CPU."""

import pytest
import torch
import torch.nn.functional as F

import moco_torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def official_infonce(q, k, queue_kc, T):
    """The official ModelMoCo.contrastive_loss lines, queue_kc in the crate's [K, C] layout (as float32)."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", [q, queue_kc.float().t()])
    logits = torch.cat([l_pos, l_neg], dim=1) / T
    labels = torch.zeros(logits.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels), logits


def official_ctr(q, k, T):
    """moco-v3's MoCo.contrastive_loss."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    logits = torch.einsum("nc,mc->nm", [q, k]) / T
    labels = torch.arange(logits.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels) * (2 * T), logits


def unit_queue(K, C, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(K, C, generator=g), dim=1).to(dtype)


def counts(logits, target):
    """acc@1 / acc@5 counts: rows whose target logit has fewer than 1 / 5 logits strictly above it."""
    pos = logits.gather(1, target.unsqueeze(1))
    above = (logits > pos).sum(dim=1)
    return int((above < 1).sum()), int((above < 5).sum())


def assert_close(name, got, want, rel):
    got, want = got.detach().cpu(), want.detach().cpu()
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= rel * max(scale, 1e-30), f"{name}: max |got - want| {err:.3e} > {rel:g} x {scale:.3e}"


SHAPES = [(1, 7, 33), (2, 1, 3), (8, 17, 64), (16, 128, 4096), (64, 128, 1000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,k", SHAPES)
@pytest.mark.parametrize("T", [0.07, 0.2, 1.0])
def test_infonce_matches_the_official_formulation(n, c, k, dtype, T, device):
    g = torch.Generator().manual_seed(n * 1000 + c + k)
    q = torch.randn(n, c, generator=g, requires_grad=True)
    key = torch.randn(n, c, generator=g)
    queue = unit_queue(k, c, dtype, n + c)
    want, logits = official_infonce(q, key, queue, T)
    (want_grad,) = torch.autograd.grad(want, q)
    qd, key, queue = q.detach().to(device).requires_grad_(), key.to(device), queue.to(device)
    r = moco_torch.infonce(qd, key, queue, T)
    (got_grad,) = torch.autograd.grad(r.loss, qd)
    assert r.loss.device == device and got_grad.device == device
    assert abs(r.loss.item() - want.item()) <= 1e-5 * abs(want.item()), (r.loss.item(), want.item())
    assert_close("dq", got_grad, want_grad, 1e-5)
    assert (int(r.top1), int(r.top5)) == counts(logits, torch.zeros(n, dtype=torch.long))
    # backward through loss.backward() as well, with a scaled upstream gradient
    (3.0 * moco_torch.infonce(qd, key, queue, T).loss).backward()
    assert_close("3 dq", qd.grad, 3.0 * want_grad, 1e-5)


@pytest.mark.parametrize("precision", ["half", "tf32x3", "tf32"])
@pytest.mark.parametrize("queue_dtype", [torch.bfloat16, torch.float32])
def test_tensor_core_precisions_are_the_same_computation_on_the_cpu(precision, queue_dtype):
    """The CPU has no 16-bit or TF32 arithmetic: precision="half", "tf32x3" and "tf32" permit the tensor cores, they
    never require less accuracy, so on CPU tensors they give what "fp32" gives, bit for bit."""
    g = torch.Generator().manual_seed(3)
    q, key, queue = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g), unit_queue(40, 16, queue_dtype, 2)
    a, b = moco_torch.infonce(q, key, queue, 0.2), moco_torch.infonce(q, key, queue, 0.2, precision=precision)
    assert a.loss.item() == b.loss.item() and (a.top1, a.top5) == (b.top1, b.top5)
    assert moco_torch.moco_v3_loss(q, q, key, key, 0.2).loss.item() == moco_torch.moco_v3_loss(q, q, key, key, 0.2, precision=precision).loss.item()


def test_only_q_gets_a_gradient_and_no_grad_mode_works(device):
    q = torch.randn(4, 8, device=device, requires_grad=True)
    key = torch.randn(4, 8, device=device, requires_grad=True)
    queue = unit_queue(16, 8, torch.float32, 1).to(device).requires_grad_()
    moco_torch.infonce(q, key, queue, 0.2).loss.backward()
    assert q.grad is not None and key.grad is None and queue.grad is None
    with torch.no_grad():
        r = moco_torch.infonce(q, key, queue, 0.2)
    want, logits = official_infonce(q.detach().cpu(), key.detach().cpu(), queue.detach().cpu(), 0.2)
    assert abs(r.loss.item() - want.item()) <= 1e-5 * want.item() and not r.loss.requires_grad
    assert (int(r.top1), int(r.top5)) == counts(logits, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("n,c", [(1, 5), (2, 3), (9, 17), (64, 128), (256, 64)])
@pytest.mark.parametrize("T", [0.2, 1.0])
def test_moco_v3_loss_matches_moco_v3(n, c, T, device):
    g = torch.Generator().manual_seed(n + c)
    q1, q2 = (torch.randn(n, c, generator=g, requires_grad=True) for _ in range(2))
    k1, k2 = (torch.randn(n, c, generator=g) for _ in range(2))
    a, la = official_ctr(q1, k2, T)
    b, lb = official_ctr(q2, k1, T)
    want = a + b
    w1, w2 = torch.autograd.grad(want, [q1, q2])
    q1, q2 = (t.detach().to(device).requires_grad_() for t in (q1, q2))
    r = moco_torch.moco_v3_loss(q1, q2, k1.to(device), k2.to(device), T)
    g1, g2 = torch.autograd.grad(r.loss, [q1, q2])
    assert abs(r.loss.item() - want.item()) <= 1e-5 * abs(want.item()), (r.loss.item(), want.item())
    assert_close("dq1", g1, w1, 1e-5)
    assert_close("dq2", g2, w2, 1e-5)
    diag = torch.arange(n)
    assert [int(x) for x in r.counts] == [*counts(la, diag), *counts(lb, diag)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_match_the_official_logits(dtype, device):
    q, key = torch.randn(5, 9), torch.randn(5, 9)
    queue = unit_queue(40, 9, dtype, 3)
    _, want = official_infonce(q, key, queue, 0.2)
    l_pos, l_neg = moco_torch.logits(q.to(device), key.to(device), queue.to(device), 0.2)
    assert l_pos.device == device
    assert l_pos.shape == (5, 1) and l_neg.shape == (5, 40)
    assert_close("logits", torch.cat([l_pos, l_neg], dim=1), want, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,ptr", [(4, 16, 0), (4, 16, 12), (5, 16, 14), (1, 3, 2), (16, 16, 0), (7, 10, 9)])
def test_enqueue_writes_normalised_keys_with_wrap_around(n, k, ptr, dtype, device):
    c = 7
    queue = unit_queue(k, c, dtype, 5)
    before = queue.clone()
    keys = torch.randn(n, c)
    on_device = queue.to(device)
    new_ptr = moco_torch.enqueue_(on_device, keys.to(device), ptr)
    queue = on_device.cpu()
    assert new_ptr == (ptr + n) % k
    want = before.float().clone()
    rows = [(ptr + i) % k for i in range(n)]
    want[rows] = F.normalize(keys, dim=1).to(dtype).float()
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert_close("queue", queue.float(), want, tol)
    untouched = [j for j in range(k) if j not in rows]
    assert torch.equal(queue[untouched], before[untouched])


def test_enqueue_matches_the_official_dequeue_and_enqueue(device):
    # the colab's _dequeue_and_enqueue on its [C, K] queue, K % N == 0
    C, K, N = 16, 32, 8
    official = F.normalize(torch.randn(C, K), dim=0)
    ours = moco_torch.queue_from_official(official.to(device))
    ptr_o, ptr = 0, 0
    for step in range(6):
        keys = F.normalize(torch.randn(N, C), dim=1)
        official[:, ptr_o:ptr_o + N] = keys.t()
        ptr_o = (ptr_o + N) % K
        ptr = moco_torch.enqueue_(ours, keys.to(device), ptr)
        assert ptr == ptr_o
        assert_close(f"step {step}", moco_torch.queue_to_official(ours), official, 1e-6)


def test_ema_is_bit_identical_to_the_official_update(device):
    g = torch.Generator().manual_seed(7)
    shapes = [(64, 3, 3, 3), (64,), (1,), (128, 512), (7, 5)]
    for m in [0.99, 0.999, 0.0, 1.0, 0.5, 0.123456789]:
        pk = [torch.randn(s, generator=g).to(device) for s in shapes]
        pq = [torch.randn(s, generator=g).to(device) for s in shapes]
        # the official update, on the same device (PyTorch's own kernels there)
        want = [a * m + b * (1.0 - m) for a, b in zip(pk, pq)]
        moco_torch.ema_(pk, pq, m)
        for i, (a, w) in enumerate(zip(pk, want)):
            assert torch.equal(a, w), f"m {m}: tensor {i} differs from param_k * m + param_q * (1. - m)"


def test_ema_on_parameters_of_two_modules(device):
    a, b = torch.nn.Linear(5, 3).to(device), torch.nn.Linear(5, 3).to(device)
    want = [pk.detach() * 0.9 + pq.detach() * (1.0 - 0.9) for pk, pq in zip(a.parameters(), b.parameters())]
    moco_torch.ema_([p.data for p in a.parameters()], [p.data for p in b.parameters()], 0.9)
    assert all(torch.equal(p.detach(), w) for p, w in zip(a.parameters(), want))


def test_queue_layout_helpers_round_trip():
    ck = torch.randn(8, 20)
    kc = moco_torch.queue_from_official(ck)
    assert kc.shape == (20, 8) and kc.is_contiguous() and torch.equal(moco_torch.queue_to_official(kc), ck)


def test_moco_loss_module_keeps_the_queue_in_its_state_dict(device):
    torch.manual_seed(0)
    m = moco_torch.MoCoLoss(K=32, dim=8, T=0.2).to(device)
    q, key = torch.randn(4, 8, device=device, requires_grad=True), torch.randn(4, 8, device=device)
    queue0 = m.queue.clone()
    want, _ = official_infonce(q.detach().cpu(), key.cpu(), queue0.cpu(), 0.2)
    loss = m(q, key)
    assert abs(loss.item() - want.item()) <= 1e-5 * want.item()
    assert torch.equal(m.queue, queue0) and int(m.queue_ptr) == 0, "forward does not enqueue"
    m.enqueue(key)
    assert int(m.queue_ptr) == 4
    assert_close("enqueued", m.queue[:4], F.normalize(key, dim=1), 1e-6)
    sd = m.state_dict()
    assert set(sd) == {"queue", "queue_ptr"}
    m2 = moco_torch.MoCoLoss(K=32, dim=8, T=0.2).to(device)
    m2.load_state_dict(sd)
    assert torch.equal(m2.queue, m.queue) and int(m2.queue_ptr) == 4


def official_health(q, k, negatives, skip_diagonal):
    """The statistics from their definitions, in float64."""
    q = F.normalize(q.double(), dim=1)
    k = F.normalize(k.double(), dim=1)
    n = q.shape[0]
    alignment = (q - k).pow(2).sum(dim=1).mean().item()
    d2 = torch.cdist(q, q).pow(2)
    iu = torch.triu_indices(n, n, 1)
    uniformity = torch.log(torch.exp(-2 * d2[iu[0], iu[1]]).mean()).item() if n > 1 else float("nan")
    dim_std = q.std(dim=0, unbiased=True).mean().item() if n > 1 else float("nan")
    pos = (q * k).sum(dim=1).mean().item()
    logits = q @ negatives.double().t()
    if skip_diagonal:
        logits = logits.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    finite = logits[torch.isfinite(logits)]
    row_max = logits.max(dim=1).values
    s = torch.linalg.svdvals(q)
    p = s / s.sum()
    p = p[p > 0]
    rank = torch.exp(-(p * p.log()).sum()).item()
    return [alignment, uniformity, dim_std, pos, finite.mean().item(), finite.max().item(), row_max.mean().item(), pos - row_max.mean().item(), rank]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,k", [(2, 5, 9), (16, 32, 100), (40, 17, 64)])
def test_health_matches_the_definitions(n, c, k, dtype):
    g = torch.Generator().manual_seed(n + c + k)
    q, key = torch.randn(n, c, generator=g), torch.randn(n, c, generator=g)
    queue = unit_queue(k, c, dtype, 9)
    got = moco_torch.health(q, key, queue)
    want = official_health(q, key, queue.float(), False)
    for name, a, b in zip(got._fields, got, want):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), f"{name}: {a} vs {b}"
    # MoCo v3: in-batch negatives
    got = moco_torch.health(q, key)
    want = official_health(q, key, F.normalize(key, dim=1), True)
    for name, a, b in zip(got._fields, got, want):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), f"in-batch {name}: {a} vs {b}"


def test_health_of_a_collapsed_batch_and_the_drift():
    q = torch.ones(8, 16) + 1e-3 * torch.arange(16.0)
    h = moco_torch.health(q, q.clone(), unit_queue(32, 16, torch.float32, 1))
    assert abs(h.effective_rank - 1.0) < 1e-2 and h.dim_std < 1e-5 and h.alignment == 0.0
    a, b = [torch.randn(10, 3), torch.randn(4)], [torch.randn(10, 3), torch.randn(4)]
    want = (torch.cat([x.flatten() for x in a]).double() - torch.cat([x.flatten() for x in b]).double()).norm() / torch.cat([x.flatten() for x in b]).double().norm()
    assert abs(moco_torch.key_drift(a, b) - want.item()) <= 1e-12 * want.item()
