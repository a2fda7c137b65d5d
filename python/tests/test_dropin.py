"""The drop-in: the official colab's ModelMoCo (scripts/moco_torch_reference.py, the colab's code verbatim but for
.cuda(): SplitBatchNorm, shuffle-BN, _dequeue_and_enqueue) runs one training step twice from the same weights,
queue and random state, once as written and once with MoCoLoss in place of its logits, cat, CrossEntropyLoss and
_dequeue_and_enqueue lines: the same loss, the same gradients within 1e-5, the same queue afterwards."""

import copy
import importlib.util
import pathlib

import pytest
import torch
import torch.nn as nn

import moco_torch

pytest.importorskip("torchvision")
REFERENCE = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "moco_torch_reference.py"
spec = importlib.util.spec_from_file_location("moco_torch_reference", REFERENCE)
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)


class ModelMoCoWithMoCoLoss(ref.ModelMoCo):
    """The official model with its loss lines replaced by moco_torch.MoCoLoss (queue and pointer included)."""

    def __init__(self, official):
        nn.Module.__init__(self)
        self.K, self.m, self.T, self.symmetric, self.shuffle = official.K, official.m, official.T, official.symmetric, official.shuffle
        self.encoder_q = copy.deepcopy(official.encoder_q)
        self.encoder_k = copy.deepcopy(official.encoder_k)
        self.moco_loss = moco_torch.MoCoLoss(K=official.K, dim=official.queue.shape[0], T=official.T)
        # the same starting queue, in the crate's [K, C] layout
        self.moco_loss.queue.copy_(moco_torch.queue_from_official(official.queue))

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        moco_torch.ema_([p.data for p in self.encoder_k.parameters()], [p.data for p in self.encoder_q.parameters()], self.m)

    def contrastive_loss(self, im_q, im_k):
        q = self.encoder_q(im_q)
        q = nn.functional.normalize(q, dim=1)
        with torch.no_grad():
            im_k_, idx_unshuffle = self._batch_shuffle_single_gpu(im_k)
            k = self.encoder_k(im_k_)
            k = nn.functional.normalize(k, dim=1)
            k = self._batch_unshuffle_single_gpu(k, idx_unshuffle)
        loss = self.moco_loss(q, k)  # the logits, cat, / T and CrossEntropyLoss lines
        return loss, q, k

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        self.moco_loss.enqueue(keys)


@pytest.mark.parametrize("symmetric", [False, True])
def test_modelmoco_step_with_and_without_mocoloss(symmetric):
    torch.manual_seed(0)
    official = ref.ModelMoCo(dim=16, K=32, m=0.99, T=0.1, arch="resnet18", bn_splits=2, symmetric=symmetric, shuffle=True)
    ours = ModelMoCoWithMoCoLoss(official)
    im1, im2 = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)
    results = []
    for model in (official, ours):
        model.train()
        torch.manual_seed(1)  # the same shuffle-BN permutations
        loss = model(im1, im2)
        model.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.encoder_q.named_parameters() if p.grad is not None}
        queue = official.queue.clone() if model is official else moco_torch.queue_to_official(ours.moco_loss.queue)
        ptr = int(official.queue_ptr) if model is official else int(ours.moco_loss.queue_ptr)
        keys = {n: p.detach().clone() for n, p in model.encoder_k.named_parameters()}
        results.append((loss.item(), grads, queue, ptr, keys))
    (l0, g0, q0, p0, k0), (l1, g1, q1, p1, k1) = results
    assert abs(l0 - l1) <= 1e-5 * abs(l0), (l0, l1)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        scale = g0[name].abs().max().item()
        err = (g0[name] - g1[name]).abs().max().item()
        assert err <= 1e-5 * max(scale, 1e-12), f"grad {name}: {err:.3e} of {scale:.3e}"
    assert p0 == p1
    assert (q0 - q1).abs().max().item() <= 1e-6, "queue afterwards"
    for name in k0:
        assert torch.equal(k0[name], k1[name]), f"key encoder {name}: ema_ is not the official update bit for bit"
