"""The toy2d train step's six large matmuls alone, XLA:CPU against PyTorch: how fast that step could be at most.

    python benchmarks/toy_matmuls.py [--seconds=2]      # needs torch (pip install -e '.[bench]')

The toy2d MLP (2+1 -> 128 x 3 -> 2, batch B = 512) has two 128 x 128 layers; a train step multiplies through
each forward (h @ W) and backward (dh @ W^T for the input, h^T @ dh for the weight): six [512, 128] x [128, 128]
matmuls, 2 B 128^2 FLOPs each, 98 % of the step's matmul FLOPs (the 3 -> 128 and 128 -> 2 layers are the
rest). This times exactly that chain, one dependent on the next, with nothing else: jitted in calls of 50 (the
trainer's training.steps_per_call for the toys) under the MLPs' XLA flags, and in eager PyTorch. A train step
cannot run faster than its matmuls do, so chains/s bounds the toy2d train steps/s. Run it as the scripts run
(tuned environment; see diffvar/cli.py): `DIFFVAR_TUNE=0` for plain.
"""
from __future__ import annotations

import argparse
import json

from diffvar import cli

cli.tune_process()
cli.use_xla_flags("mlp")  # the toys' XLA flags (one device)

import jax  # noqa: E402  (after the re-exec above)
import jax.numpy as jnp  # noqa: E402
from timing import rate  # noqa: E402  (benchmarks/timing.py: calls per second after two warm-up calls)

B, H, K = 512, 128, 50  # batch, width, chains per jitted call
FLOPS = 6 * 2 * B * H * H


def chain(x, w1, w2, mm, t):
    """The six matmuls of one step through two H x H layers (mm: a matmul, t: a transpose): the gradients
    (dL/dx, dL/dW1, dL/dW2) of L = |x W1 W2|^2 / 2, which main() checks against jax.grad."""
    h1 = mm(x, w1)
    h2 = mm(h1, w2)                                         # forward
    g2 = h2
    dw2, g1 = mm(t(h1), g2), mm(g2, t(w2))                  # backward through layer 2
    dw1, g0 = mm(t(x), g1), mm(g1, t(w1))                   # backward through layer 1
    return g0, dw1, dw2


def inputs():
    """x [B, H], W1, W2 [H, H]: standard normal, the weights scaled by 1 / H."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    return jax.random.normal(k1, (B, H)), *(jax.random.normal(k, (H, H)) / H for k in (k2, k3))


def jax_chains(x, w1, w2, seconds):
    def body(c, _):
        x, w1, w2 = c
        g0, dw1, dw2 = chain(x, w1, w2, jnp.matmul, jnp.transpose)
        return (x + 1e-6 * g0, w1 - 1e-6 * dw1, w2 - 1e-6 * dw2), None
    f = jax.jit(lambda c: jax.lax.scan(body, c, None, length=K)[0])
    state = [(x, w1, w2)]

    def call():
        state[0] = jax.block_until_ready(f(state[0]))
    return rate(call, seconds) * K


def torch_chains(seconds):
    import torch
    x, w1, w2 = torch.randn(B, H), torch.randn(H, H) / H, torch.randn(H, H) / H
    return rate(lambda: chain(x, w1, w2, torch.matmul, torch.t), seconds)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=2.0)
    args = p.parse_args()
    x, w1, w2 = inputs()
    want = jax.grad(lambda *a: 0.5 * jnp.sum((a[0] @ a[1] @ a[2]) ** 2), argnums=(0, 1, 2))(x, w1, w2)
    got = chain(x, w1, w2, jnp.matmul, jnp.transpose)
    rel_err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(got, want))
    j, t = jax_chains(x, w1, w2, args.seconds), torch_chains(args.seconds)
    print(f"six [{B}, {H}] x [{H}, {H}] matmuls: jax {j:.0f}/s ({FLOPS * j / 1e9:.0f} GFLOP/s), torch {t:.0f}/s "
          f"({FLOPS * t / 1e9:.0f} GFLOP/s)", flush=True)
    print(json.dumps({"jax": jax.__version__, "gradient_rel_err": rel_err, "chains_per_sec": {"jax": j, "torch": t},
                      "gflops": {"jax": FLOPS * j / 1e9, "torch": FLOPS * t / 1e9}}))


if __name__ == "__main__":
    main()
