"""The official CIFAR-10 colab's MoCo training step in PyTorch (facebookresearch/moco,
`colab/moco_cifar10_demo.ipynb`), for a side-by-side run with `train_resnet18` on the same data and flags.

What is the colab's, line for line: `SplitBatchNorm`, `ModelBase` (ResNet-18, 3x3 stem, no max-pool, linear head),
`ModelMoCo` (momentum update before the keys, `_batch_shuffle_single_gpu` -> `encoder_k` ->
`_batch_unshuffle_single_gpu`, queue `[dim, K]`, InfoNCE with `CrossEntropyLoss`, enqueue after the loss, optional
symmetric loss), `train` (SGD momentum 0.9, wd, `adjust_learning_rate` with the cosine counting epochs from 1),
`knn_predict` and `test` (kNN monitor on the L2-normalised head outputs, k=200, t=0.1). What is added: flags for
the image size, crop scale, flip, shuffle-BN and the cosine's first epoch (as `train_resnet18` has them), a kNN
measurement of the random init (epoch 0, measured the same way), CPU instead of CUDA, a seed, and a JSONL log.

The data is a CIFAR-10-binary folder (`train.bin`, `test.bin`); the crate writes the embedded digits as one:

    cargo run --release --example train_resnet18 -- --export-data digits-cifar
    python3 -m venv torchvenv && torchvenv/bin/pip install torch torchvision numpy
    torchvenv/bin/python scripts/moco_torch_reference.py --data digits-cifar --image-size 16 --epochs 12 \\
        --batch 64 --queue 512 --bn-splits 2 --crop-min 0.5 --no-flip --cosine-from-zero --seed 0 --out torch-s0.jsonl
"""
import argparse
import json
import math
import time
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as transforms
from PIL import Image
from torchvision.models import resnet


def load_bin(path):
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), raw[:, 0].astype(np.int64)


class CIFAR10Pair(torch.utils.data.Dataset):
    """The colab's CIFAR10Pair: two augmentations of one image."""

    def __init__(self, x, transform):
        self.x, self.transform = x, transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        img = Image.fromarray(self.x[i])
        return self.transform(img), self.transform(img)


class Plain(torch.utils.data.Dataset):
    def __init__(self, x, y, transform):
        self.x, self.targets, self.transform = x, list(y), transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i])), self.targets[i]


# ---- the colab's model, verbatim but for .cuda() ----
class SplitBatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, num_splits, **kw):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, input):
        N, C, H, W = input.shape
        if self.training or not self.track_running_stats:
            running_mean_split = self.running_mean.repeat(self.num_splits)
            running_var_split = self.running_var.repeat(self.num_splits)
            outcome = nn.functional.batch_norm(
                input.view(-1, C * self.num_splits, H, W), running_mean_split, running_var_split,
                self.weight.repeat(self.num_splits), self.bias.repeat(self.num_splits),
                True, self.momentum, self.eps).view(N, C, H, W)
            self.running_mean.data.copy_(running_mean_split.view(self.num_splits, C).mean(dim=0))
            self.running_var.data.copy_(running_var_split.view(self.num_splits, C).mean(dim=0))
            return outcome
        else:
            return nn.functional.batch_norm(
                input, self.running_mean, self.running_var,
                self.weight, self.bias, False, self.momentum, self.eps)


class ModelBase(nn.Module):
    def __init__(self, feature_dim=128, arch=None, bn_splits=16):
        super(ModelBase, self).__init__()
        norm_layer = partial(SplitBatchNorm, num_splits=bn_splits) if bn_splits > 1 else nn.BatchNorm2d
        resnet_arch = getattr(resnet, arch)
        net = resnet_arch(num_classes=feature_dim, norm_layer=norm_layer)
        self.net = []
        for name, module in net.named_children():
            if name == 'conv1':
                module = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            if isinstance(module, nn.MaxPool2d):
                continue
            if isinstance(module, nn.Linear):
                self.net.append(nn.Flatten(1))
            self.net.append(module)
        self.net = nn.Sequential(*self.net)

    def forward(self, x):
        return self.net(x)


class ModelMoCo(nn.Module):
    def __init__(self, dim=128, K=4096, m=0.99, T=0.1, arch='resnet18', bn_splits=8, symmetric=True, shuffle=True):
        super(ModelMoCo, self).__init__()
        self.K, self.m, self.T, self.symmetric, self.shuffle = K, m, T, symmetric, shuffle
        self.encoder_q = ModelBase(feature_dim=dim, arch=arch, bn_splits=bn_splits)
        self.encoder_k = ModelBase(feature_dim=dim, arch=arch, bn_splits=bn_splits)
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data.copy_(param_q.data)
            param_k.requires_grad = False
        self.register_buffer("queue", torch.randn(dim, K))
        self.queue = nn.functional.normalize(self.queue, dim=0)
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data = param_k.data * self.m + param_q.data * (1. - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        batch_size = keys.shape[0]
        ptr = int(self.queue_ptr)
        assert self.K % batch_size == 0  # for simplicity
        self.queue[:, ptr:ptr + batch_size] = keys.t()
        ptr = (ptr + batch_size) % self.K
        self.queue_ptr[0] = ptr

    @torch.no_grad()
    def _batch_shuffle_single_gpu(self, x):
        idx_shuffle = torch.randperm(x.shape[0])
        idx_unshuffle = torch.argsort(idx_shuffle)
        return x[idx_shuffle], idx_unshuffle

    @torch.no_grad()
    def _batch_unshuffle_single_gpu(self, x, idx_unshuffle):
        return x[idx_unshuffle]

    def contrastive_loss(self, im_q, im_k):
        q = self.encoder_q(im_q)
        q = nn.functional.normalize(q, dim=1)
        with torch.no_grad():
            if self.shuffle:
                im_k_, idx_unshuffle = self._batch_shuffle_single_gpu(im_k)
            else:  # --no-shuffle-bn (ablation; not in the colab)
                im_k_, idx_unshuffle = im_k, torch.arange(im_k.shape[0])
            k = self.encoder_k(im_k_)
            k = nn.functional.normalize(k, dim=1)
            k = self._batch_unshuffle_single_gpu(k, idx_unshuffle)
        l_pos = torch.einsum('nc,nc->n', [q, k]).unsqueeze(-1)
        l_neg = torch.einsum('nc,ck->nk', [q, self.queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1)
        logits /= self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        loss = nn.CrossEntropyLoss()(logits, labels)
        return loss, q, k

    def forward(self, im1, im2):
        with torch.no_grad():
            self._momentum_update_key_encoder()
        if self.symmetric:
            loss_12, q1, k2 = self.contrastive_loss(im1, im2)
            loss_21, q2, k1 = self.contrastive_loss(im2, im1)
            loss = loss_12 + loss_21
            k = torch.cat([k1, k2], dim=0)
        else:
            loss, q, k = self.contrastive_loss(im1, im2)
        self._dequeue_and_enqueue(k)
        return loss


# ---- the colab's training and kNN monitor ----
def adjust_learning_rate(optimizer, epoch, args):
    lr = args.lr
    if args.cos:
        lr *= 0.5 * (1. + math.cos(math.pi * epoch / args.epochs))
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr
    return lr


def train(net, data_loader, train_optimizer, epoch, args):
    net.train()
    # the colab calls this with epoch in 1..epochs; --cosine-from-zero passes epoch - 1 (train_resnet18's choice)
    lr = adjust_learning_rate(train_optimizer, epoch - 1 if args.cosine_from_zero else epoch, args)
    total_loss, total_num = 0.0, 0
    for im_1, im_2 in data_loader:
        loss = net(im_1, im_2)
        train_optimizer.zero_grad()
        loss.backward()
        train_optimizer.step()
        total_num += data_loader.batch_size
        total_loss += loss.item() * data_loader.batch_size
    return total_loss / total_num, lr


def knn_predict(feature, feature_bank, feature_labels, classes, knn_k, knn_t):
    sim_matrix = torch.mm(feature, feature_bank)
    sim_weight, sim_indices = sim_matrix.topk(k=knn_k, dim=-1)
    sim_labels = torch.gather(feature_labels.expand(feature.size(0), -1), dim=-1, index=sim_indices)
    sim_weight = (sim_weight / knn_t).exp()
    one_hot_label = torch.zeros(feature.size(0) * knn_k, classes, device=sim_labels.device)
    one_hot_label = one_hot_label.scatter(dim=-1, index=sim_labels.view(-1, 1), value=1.0)
    pred_scores = torch.sum(one_hot_label.view(feature.size(0), -1, classes) * sim_weight.unsqueeze(dim=-1), dim=1)
    return pred_scores.argsort(dim=-1, descending=True)


def test(net, memory_data_loader, test_data_loader, args):
    net.eval()
    classes = 10
    total_top1, total_num, feature_bank = 0.0, 0, []
    with torch.no_grad():
        for data, target in memory_data_loader:
            feature_bank.append(F.normalize(net(data), dim=1))
        feature_bank = torch.cat(feature_bank, dim=0).t().contiguous()
        feature_labels = torch.tensor(memory_data_loader.dataset.targets, device=feature_bank.device)
        for data, target in test_data_loader:
            feature = F.normalize(net(data), dim=1)
            pred_labels = knn_predict(feature, feature_bank, feature_labels, classes, args.knn_k, args.knn_t)
            total_num += data.size(0)
            total_top1 += (pred_labels[:, 0] == target).float().sum().item()
    return total_top1 / total_num * 100


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder with train.bin and test.bin (CIFAR-10 binary)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=0.06)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--queue", type=int, default=4096)
    ap.add_argument("--momentum", type=float, default=0.99)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--bn-splits", type=int, default=8)
    ap.add_argument("--symmetric", action="store_true")
    ap.add_argument("--no-shuffle-bn", action="store_true")
    ap.add_argument("--no-cosine", action="store_true")
    ap.add_argument("--cosine-from-zero", action="store_true")
    ap.add_argument("--crop-min", type=float, default=0.08)
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--knn-k", type=int, default=200)
    ap.add_argument("--knn-t", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    # one thread: on shared cores, OpenMP's spinning threads made a step 5-10x slower than one thread (measured)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSONL log, one line per epoch")
    args = ap.parse_args()
    args.cos = not args.no_cosine
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)

    xtr, ytr = load_bin(f"{args.data}/train.bin")
    xte, yte = load_bin(f"{args.data}/test.bin")
    s = args.image_size
    norm = transforms.Normalize([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
    # the colab's train_transform (RandomResizedCrop(32) = scale (0.08, 1)), with the size, crop and flip as flags
    train_transform = transforms.Compose(
        [transforms.RandomResizedCrop(s, scale=(args.crop_min, 1.0))]
        + ([] if args.no_flip else [transforms.RandomHorizontalFlip(p=0.5)])
        + [transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
           transforms.RandomGrayscale(p=0.2),
           transforms.ToTensor(), norm])
    test_transform = transforms.Compose(([] if s == 32 else [transforms.Resize(s)]) + [transforms.ToTensor(), norm])
    g = torch.Generator()
    g.manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(CIFAR10Pair(xtr, train_transform), batch_size=args.batch, shuffle=True,
                                               num_workers=0, drop_last=True, generator=g)
    memory_loader = torch.utils.data.DataLoader(Plain(xtr, ytr, test_transform), batch_size=args.batch, shuffle=False)
    test_loader = torch.utils.data.DataLoader(Plain(xte, yte, test_transform), batch_size=args.batch, shuffle=False)

    model = ModelMoCo(dim=128, K=args.queue, m=args.momentum, T=args.temperature, arch='resnet18',
                      bn_splits=args.bn_splits, symmetric=args.symmetric, shuffle=not args.no_shuffle_bn)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, weight_decay=args.wd, momentum=0.9)
    log = open(args.out, "w") if args.out else None

    def emit(rec):
        print(json.dumps(rec), flush=True)
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    t0 = time.time()
    emit({"epoch": 0, "knn_top1": test(model.encoder_q, memory_loader, test_loader, args), "seed": args.seed})
    for epoch in range(1, args.epochs + 1):
        t = time.time()
        loss, lr = train(model, train_loader, optimizer, epoch, args)
        acc = test(model.encoder_q, memory_loader, test_loader, args)
        emit({"epoch": epoch, "loss_mean": loss, "lr": lr, "knn_top1": acc, "epoch_s": round(time.time() - t, 1),
              "seed": args.seed})
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
