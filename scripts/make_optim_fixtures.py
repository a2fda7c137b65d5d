#!/usr/bin/env python3
"""Generate the PyTorch optimiser fixtures used by `tests/optim.rs`.

Writes (safetensors, float32 unless said otherwise) into tests/fixtures/:

  optim_sgd.safetensors           torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=1e-4)
  optim_sgd_nesterov.safetensors  torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
  optim_adamw.safetensors         torch.optim.AdamW(lr=1e-3, weight_decay=0.1)  (betas 0.9/0.999, eps 1e-8)
  optim_lars.safetensors          facebookresearch/moco-v3 moco/optimizer.py LARS
                                  (lr=5.0, weight_decay=1e-2, momentum=0.9, trust_coefficient=0.001)

Each optimiser runs STEPS = 5 steps on the same four tensors, flattened back to back in this order
(the "flat order" of every flat tensor below):

  conv.weight  [3, 2, 3, 3]  offset  0, len 54   (randn, seed 0)
  fc.weight    [5, 7]        offset 54, len 35   (randn)
  fc.bias      [5]           offset 89, len  5   (randn)
  zero.weight  [2, 3]        offset 94, len  6   (zeros: LARS's ||p|| = 0 branch on the first step)

  total 100 elements. Each tensor is flattened row-major (torch's .reshape(-1)).

Tensors in every file:

  spans        int64 [4, 3]   (offset, len, ndim) per tensor, in flat order
  params0      [100]          initial parameters
  grads        [5, 100]       gradient fed at step s (randn * 0.5, seed 1000 + s), row s
  params       [5, 100]       parameters after step s
  <state>      [5, 100]       optimiser state after step s:
                              SGD: momentum_buffer; LARS: mu; AdamW: exp_avg, exp_avg_sq
  lr, momentum, weight_decay, (dampening, nesterov | beta1, beta2, eps | trust_coefficient)
               float64 [1]    hyperparameters, exactly the Python floats torch was given

The LARS class below is moco-v3's, re-written verbatim from its formula: for p.ndim > 1,
dp = g + wd * p, q = where(||p|| > 0, where(||dp|| > 0, trust * ||p|| / ||dp||, 1), 1), dp *= q; 1-d params
(biases, norms) get neither; mu = momentum * mu + dp (mu starts at zeros); p -= lr * mu.

Run from the repository root:

    /opt/torchvenv/bin/python scripts/make_optim_fixtures.py
"""

import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, os.pardir, "tests", "fixtures")
STEPS = 5


class LARS(torch.optim.Optimizer):
    """LARS optimizer, no rate scaling or weight decay for parameters <= 1D (moco-v3 moco/optimizer.py)."""

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim > 1:  # if not normalization gamma/beta or bias
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(
                        param_norm > 0.0,
                        torch.where(update_norm > 0, (g["trust_coefficient"] * param_norm / update_norm), one),
                        one,
                    )
                    dp = dp.mul(q)
                param_state = self.state[p]
                if "mu" not in param_state:
                    param_state["mu"] = torch.zeros_like(p)
                mu = param_state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


SHAPES = [("conv.weight", (3, 2, 3, 3)), ("fc.weight", (5, 7)), ("fc.bias", (5,)), ("zero.weight", (2, 3))]


def make_params():
    gen = torch.Generator().manual_seed(0)
    params = []
    for name, shape in SHAPES:
        if name.startswith("zero"):
            t = torch.zeros(shape)
        else:
            t = torch.randn(shape, generator=gen)
        params.append(torch.nn.Parameter(t))
    return params


def make_grads(step, params):
    gen = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=gen) * 0.5 for p in params]


def flat(ts):
    return torch.cat([t.detach().reshape(-1) for t in ts]).clone()


def spans():
    rows, off = [], 0
    for _, shape in SHAPES:
        n = 1
        for d in shape:
            n *= d
        rows.append([off, n, len(shape)])
        off += n
    return torch.tensor(rows, dtype=torch.int64)


def scalar(x):
    return torch.tensor([float(x)], dtype=torch.float64)


def run(name, make_opt, state_keys, hparams):
    params = make_params()
    opt = make_opt(params)
    out = {"spans": spans(), "params0": flat(params)}
    grads, after = [], []
    states = {k: [] for k in state_keys}
    for s in range(STEPS):
        gs = make_grads(s, params)
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        grads.append(flat(gs))
        after.append(flat(params))
        for k in state_keys:
            states[k].append(flat([opt.state[p][k] for p in params]))
    out["grads"] = torch.stack(grads)
    out["params"] = torch.stack(after)
    for k in state_keys:
        out[k] = torch.stack(states[k])
    for k, v in hparams.items():
        out[k] = scalar(v)
    out = {k: v.contiguous() for k, v in out.items()}
    path = os.path.join(OUT_DIR, f"optim_{name}.safetensors")
    save_file(out, path, metadata={"order": ",".join(f"{n}{list(s)}" for n, s in SHAPES), "script": "scripts/make_optim_fixtures.py"})
    print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes)")


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT_DIR, exist_ok=True)
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, dampening=0.0)
    run("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=False), ["momentum_buffer"], {**sgd, "nesterov": 0})
    run(
        "sgd_nesterov",
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True, foreach=False),
        ["momentum_buffer"],
        {**sgd, "nesterov": 1},
    )
    run(
        "adamw",
        lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.1, foreach=False),
        ["exp_avg", "exp_avg_sq"],
        dict(lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.999, eps=1e-8),
    )
    run(
        "lars",
        lambda ps: LARS(ps, lr=5.0, weight_decay=1e-2, momentum=0.9, trust_coefficient=0.001),
        ["mu"],
        dict(lr=5.0, weight_decay=1e-2, momentum=0.9, trust_coefficient=0.001),
    )


if __name__ == "__main__":
    main()
