"""One 3x3 convolution, forward and both gradients, XLA:CPU against PyTorch, at the U-Nets' shapes; one JSON line.

    python benchmarks/convs.py [--seconds=2]      # needs torch (pip install -e '.[bench]')

Where the U-Net train steps spend their time on CPU: in diffvar's digits and MNIST steps the convolutions are
most of it (jax.profiler). This times value_and_grad of sum(conv(x, w)^2) with respect to x and w, jitted, in
NHWC, against torch.nn.functional.conv2d in NCHW with backward(), each on `seconds` of wall time after two
warm-up calls, and reports GFLOP/s (3 convolutions of 2 B H W 9 Cin Cout FLOPs each). Run it as the scripts
run (tuned environment; see diffvar/cli.py): `DIFFVAR_TUNE=0` for plain.
"""
from __future__ import annotations

import argparse
import json

from diffvar import cli

cli.tune_process()
cli.use_xla_flags("unet")  # the U-Nets' XLA flags (one device)

import jax  # noqa: E402  (after the re-exec above)
import jax.numpy as jnp  # noqa: E402
from timing import rate  # noqa: E402  (benchmarks/timing.py: calls per second after two warm-up calls)

# (batch, height = width, Cin, Cout): the digits (8x8, 4x4) and MNIST (28x28, 14x14) U-Nets' convolutions.
SHAPES = [(64, 28, 32, 32), (64, 28, 64, 64), (64, 14, 64, 64), (64, 8, 32, 32), (64, 8, 64, 64), (64, 4, 128, 64)]


def jax_conv(shape, seconds):
    b, h, cin, cout = shape
    x = jax.random.normal(jax.random.PRNGKey(0), (b, h, h, cin))
    w = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (3, 3, cin, cout))
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    f = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
    return 1.0 / rate(lambda: jax.block_until_ready(f(x, w)), seconds)


def torch_conv(shape, seconds):
    import torch
    b, h, cin, cout = shape
    x = torch.randn(b, cin, h, h, requires_grad=True)
    w = (0.1 * torch.randn(cout, cin, 3, 3)).requires_grad_()

    def step():
        x.grad = w.grad = None
        (torch.nn.functional.conv2d(x, w, padding=1) ** 2).sum().backward()
    return 1.0 / rate(step, seconds)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=2.0)
    args = p.parse_args()
    rows = []
    for shape in SHAPES:
        b, h, cin, cout = shape
        flops = 3 * 2 * b * h * h * 9 * cin * cout
        j, t = jax_conv(shape, args.seconds), torch_conv(shape, args.seconds)
        rows.append({"shape_bhwc_cout": shape, "jax_gflops": flops / j / 1e9, "torch_gflops": flops / t / 1e9,
                     "jax_over_torch": t / j})
        print(f"B={b} {h}x{h} {cin}->{cout}: jax {flops / j / 1e9:.0f} GFLOP/s, torch {flops / t / 1e9:.0f} "
              f"GFLOP/s, ratio {t / j:.2f}", flush=True)
    print(json.dumps({"jax": jax.__version__, "devices": len(jax.devices()), "rows": rows}))


if __name__ == "__main__":
    main()
