"""PyTorch peer: the reference implementation's computation, timed for benchmarks/bench.py's speed ratios.

The reference PyTorch implementation of the same method (sdeflow-light) trains a DDPM U-Net on the drift
a = g * score with the denoising score matching loss |a * sigma / g + eps|^2 / 2 under the VP SDE
(beta 0.1 -> 20), Adam, and evaluates the ISM-form ELBO with one Rademacher Hutchinson probe through a
reverse-mode vector-Jacobian product. This file re-implements exactly that computation, eagerly, as that
code runs it, so that benchmarks/bench.py reports "diffvar / PyTorch peer" measured in one run on one machine.

    python benchmarks/torch_peer.py --workload digits --seconds 20     # prints one JSON line
    python benchmarks/torch_peer.py --workload cifar --device cuda --amp bf16 --channels_last --compile
    python benchmarks/torch_peer.py --workload digits --train_data levels.npy --levels 17 --train_seconds 540 \
        --save peer.npz                                                # trains on real data (benchmarks/quality.py)

Measured: train steps/s (one DSM loss + backward + Adam step on a fixed batch) for `seconds`, then ELBO
examples/s (batch / time of one ELBO pass, ending in .item()) for seconds / 2, each after two warm-up calls;
and the process's peak resident memory (ru_maxrss).

Workloads (shapes and batch sizes the benchmark uses on its own side too):
    toy2d   2-D points, MLP 2+1 -> 128 -> 128 -> 128 -> 2 (softplus), batch 512
    digits  8x8x1,  U-Net ch=32 ch_mult=(1,2)   res_blocks=2 attn at 4,  batch 64
    mnist   28x28x1, U-Net ch=32 ch_mult=(1,2,2) res_blocks=2 attn at 16, batch 64
    cifar   32x32x3, U-Net ch=128 ch_mult=(1,2,2,2) res_blocks=2 attn at 16, batch 128 (accelerator only)

With --train_data (integer levels [N, H, W, C], .npy), it instead trains as the reference trains for
--train_seconds of wall time, from the first step on: batches drawn by a fresh permutation each epoch (the
last partial batch dropped), uniform dequantization z = (x + u) / K and y = logit(a + (1 - 2a) z) (a = 0.05),
the DSM loss above, Adam; then saves the weights (state_dict order) to --save and prints the steps taken.

On a GPU (--device cuda) the settings a PyTorch user would pick: --amp bf16 (torch.autocast: the network in
bf16, its output cast to float32 before the loss and the ELBO's sums), --channels_last, cudnn.benchmark (on with
cuda), --compile (torch.compile of the network); each call is synchronised, and the JSON adds the allocator's peak
(device_peak_mb). The defaults (cpu, no amp, contiguous NCHW, eager) are the CPU benchmark's.

Requires torch (the CPU build): pip install -e '.[bench]' (torch==2.13.0).
"""

import argparse
import contextlib
import json
import math
import resource
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BETA_MIN, BETA_MAX = 0.1, 20.0


def vp_alpha_sigma(t):
    log_alpha = -0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    alpha = torch.exp(log_alpha)
    return alpha, torch.sqrt(1.0 - alpha**2)


def autocast(amp, device):
    """The forward's precision context: torch.autocast to bf16 under --amp bf16, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()


def vp_g(t):
    return torch.sqrt(BETA_MIN + t * (BETA_MAX - BETA_MIN))


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    args = t[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def norm(ch):
    return nn.GroupNorm(min(32, ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, temb):
        super().__init__()
        self.n1, self.c1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(temb, cout)
        self.n2, self.c2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.c1(F.silu(self.n1(x))) + self.t(F.silu(temb))[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.n = norm(ch)
        self.q, self.k, self.v, self.o = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x, temb=None):
        b, c, hh, ww = x.shape
        h = self.n(x)
        q, k, v = (m(h).view(b, c, hh * ww) for m in (self.q, self.k, self.v))
        w = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c**-0.5, dim=-1)
        return x + self.o(torch.bmm(v, w.transpose(1, 2)).view(b, c, hh, ww))


class UNet(nn.Module):
    """DDPM U-Net as configured by the PyTorch reference (Ho et al. layout)."""

    def __init__(self, in_ch, size, ch, ch_mult, num_res_blocks=2, attn_res=(16,)):
        super().__init__()
        self.ch, temb = ch, 4 * ch
        self.temb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.begin = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.down, skips, cur, res = nn.ModuleList(), [ch], ch, size
        for i, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(cur, ch * mult, temb))
                cur = ch * mult
                if res in attn_res:
                    self.down.append(Attention(cur))
                skips.append(cur)
            if i != len(ch_mult) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(cur, cur, temb), Attention(cur), ResBlock(cur, cur, temb)])
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(cur + skips.pop(), ch * mult, temb))
                cur = ch * mult
                if res in attn_res:
                    self.up.append(Attention(cur))
            if i != 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(cur, cur, 3, padding=1))
                res *= 2
        self.end = nn.Sequential(norm(cur), nn.SiLU(), nn.Conv2d(cur, in_ch, 3, padding=1))

    def forward(self, x, t):
        temb = self.temb(timestep_embedding(t, self.ch))
        hs = [self.begin(x)]
        for m in self.down:
            if isinstance(m, ResBlock):
                hs.append(m(hs[-1], temb))
            elif isinstance(m, Attention):
                hs[-1] = m(hs[-1])
            else:
                hs.append(m(hs[-1]))
        h = hs[-1]
        for m in self.mid:
            h = m(h, temb)
        for m in self.up:
            if isinstance(m, ResBlock):
                h = m(torch.cat([h, hs.pop()], dim=1), temb)
            elif isinstance(m, Attention):
                h = m(h)
            else:
                h = m(h)
        return self.end(h)


class MLP(nn.Module):
    def __init__(self, dim=2, hidden=128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, hidden),
            nn.Softplus(),
            nn.Linear(hidden, hidden),
            nn.Softplus(),
            nn.Linear(hidden, hidden),
            nn.Softplus(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=1))


WORKLOADS = {
    "toy2d": (lambda: MLP(), (2,), 512),
    "digits": (lambda: UNet(1, 8, 32, (1, 2), attn_res=(4,)), (1, 8, 8), 64),
    "mnist": (lambda: UNet(1, 28, 32, (1, 2, 2), attn_res=(16,)), (1, 28, 28), 64),
    "cifar": (lambda: UNet(3, 32, 128, (1, 2, 2, 2), attn_res=(16,)), (3, 32, 32), 128),
}


def bcast(v, x):
    return v.view(-1, *([1] * (x.dim() - 1)))


def dsm_loss(model, x, amp="none"):
    t = torch.rand(x.shape[0], device=x.device)
    alpha, sigma = vp_alpha_sigma(t)
    eps = torch.randn_like(x)
    y = bcast(alpha, x) * x + bcast(sigma, x) * eps
    with autocast(amp, x.device):
        a = model(y, t)
    a = a.float()
    return ((a * bcast(sigma / vp_g(t), x) + eps) ** 2).flatten(1).sum(1).mean() / 2


def elbo_ism(model, x, amp="none"):
    """One-sample ISM-form ELBO with a Rademacher probe, reverse-mode, as the reference does it."""
    t = torch.rand(x.shape[0], device=x.device)
    alpha, sigma = vp_alpha_sigma(t)
    y = (bcast(alpha, x) * x + bcast(sigma, x) * torch.randn_like(x)).requires_grad_()
    with autocast(amp, x.device):
        a = model(y, t)
    a = a.float()
    beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
    mu = bcast(vp_g(t), x) * a + 0.5 * bcast(beta, x) * y
    v = torch.randint(0, 2, x.shape, device=x.device).float() * 2 - 1
    div = (torch.autograd.grad(mu, y, v)[0] * v).flatten(1).sum(1)
    alpha_T, sigma_T = vp_alpha_sigma(torch.ones(x.shape[0], device=x.device))
    yT = bcast(alpha_T, x) * x + bcast(sigma_T, x) * torch.randn_like(x)
    prior = (-0.5 * yT**2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    return prior - div - 0.5 * (a**2).flatten(1).sum(1)


def train_on_data(model, levels_nhwc, levels, alpha, seconds, batch, lr, seed):
    """Trains `model` for `seconds` of wall time (see the module docstring); returns (steps, seconds, last loss)."""
    gen = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(levels_nhwc).float().permute(0, 3, 1, 2).contiguous()  # NHWC levels -> NCHW
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps, start, loss = 0, time.perf_counter(), None
    while time.perf_counter() - start < seconds:
        order = torch.randperm(len(data), generator=gen)
        for i in range(0, len(data) - batch + 1, batch):
            x = data[order[i : i + batch]]
            z = (x + torch.rand(x.shape, generator=gen)) / levels
            loss = dsm_loss(model, torch.logit(alpha + (1 - 2 * alpha) * z))
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if time.perf_counter() - start >= seconds:
                break
    return steps, time.perf_counter() - start, float(loss.detach()) if steps else math.nan


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="digits")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    p.add_argument("--train_data", default="", help="train on these integer levels [N, H, W, C] (.npy) instead")
    p.add_argument("--levels", type=int, default=256, help="--train_data: number of levels K")
    p.add_argument("--logit_alpha", type=float, default=0.05, help="--train_data: a in the logit transform")
    p.add_argument("--train_seconds", type=float, default=60.0, help="--train_data: wall time to train")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam's learning rate (the reference's 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="bf16: torch.autocast for the network")
    p.add_argument("--channels_last", action="store_true", help="the network and its input in channels_last")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--save", default="", help="--train_data: write the trained weights here (.npz)")
    args = p.parse_args()
    from timing import rate  # benchmarks/timing.py, diffvar's loop; here, since tests load this file by path

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    make, shape, batch = WORKLOADS[args.workload]
    model = make()
    device = torch.device(args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda: this torch ({torch.__version__}) sees no CUDA device")
    if args.train_data and (args.device != "cpu" or args.amp != "none" or args.channels_last or args.compile):
        raise SystemExit("--train_data trains as the reference does, on the CPU in float32: drop the GPU options")
    if args.train_data:
        steps, seconds, loss = train_on_data(
            model,
            np.load(args.train_data),
            args.levels,
            args.logit_alpha,
            args.train_seconds,
            batch,
            args.lr,
            args.seed,
        )
        if args.save:
            np.savez(args.save, **{k: v.detach().numpy() for k, v in model.state_dict().items()})
        print(
            json.dumps(
                {
                    "peer": "pytorch-eager",
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "workload": args.workload,
                    "batch": batch,
                    "lr": args.lr,
                    "seed": args.seed,
                    "steps": steps,
                    "seconds": seconds,
                    "last_loss": loss,
                    "saved": args.save,
                }
            )
        )
        return
    fmt = torch.channels_last if args.channels_last and len(shape) == 3 else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x = torch.randn(batch, *shape, device=device).contiguous(memory_format=fmt)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    net = torch.compile(model) if args.compile else model
    params = sum(p.numel() for p in model.parameters())

    def train_step():
        loss = dsm_loss(net, x, args.amp)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()

    def eval_step():
        elbo_ism(net, x, args.amp).sum().item()

    out = {
        "peer": "pytorch-compile" if args.compile else "pytorch-eager",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "workload": args.workload,
        "batch": batch,
        "params": params,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "amp": args.amp,
        "channels_last": args.channels_last,
        "cudnn_benchmark": cuda,
        "train_steps_per_sec": rate(train_step, args.seconds),
        "elbo_examples_per_sec": batch * rate(eval_step, args.seconds / 2),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
