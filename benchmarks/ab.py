"""A/B of one code change: a workload's train step and ELBO as they were (a baseline) and as they are now,
compiled in one process and timed in alternating rounds, so that both see the same machine load.

    python benchmarks/ab.py --workload=mnist --baseline=flax_layers --rounds=3 --seconds=5
    python benchmarks/ab.py --workload=toy2d --baseline=flax_dense --rounds=8 --seconds=1.5

Each baseline puts back, for the length of its compile, what a change in diffvar.models replaced (the README's
Performance table says what each bought); both variants have the same parameters and compute the same function.
The step and ELBO are measure.py's (the trainer's compiled call, the evaluation's one-probe ISM ELBO), run as
the scripts run (cli.tune_process). Prints one JSON line: per variant the per-round train steps/s and ELBO
examples/s and their medians, current / baseline of the medians, and two checks made before timing: the
largest difference of the two variants' ELBOs on the same parameters, batch and key (float rounding), and
whether their compiled train programs differ (the baseline took effect).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from unittest import mock

from diffvar import cli

cli.tune_process()  # before jax starts: the allocator settings, as in every script

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import measure  # noqa: E402  (benchmarks/measure.py)
from diffvar.models import mlp, unet  # noqa: E402
from timing import rate  # noqa: E402


def _flax_layers():
    """Before the U-Net's layers were matmuls with ones: flax's Conv and GroupNorm, the time embedding
    broadcast over pixels by broadcast_to."""
    return {unet: {"Conv": nn.Conv,
                   "group_norm": lambda ch: nn.GroupNorm(num_groups=min(32, ch), epsilon=1e-6),
                   "per_example": lambda s, p: jnp.broadcast_to(s[:, None, :], (s.shape[0], p, s.shape[1]))}}


def _flax_dense():
    """Before layers.Dense: the MLP's layers are flax's nn.Dense (thin matmuls as dot calls)."""
    return {mlp: {"Dense": nn.Dense}}


def _jax_softplus():
    """Before layers.softplus: the MLP's softplus is jax.nn.softplus (its derivative through logaddexp)."""
    return {mlp: {"ACTIVATIONS": dict(mlp.ACTIVATIONS, softplus=nn.softplus)}}


BASELINES = {"flax_layers": _flax_layers, "flax_dense": _flax_dense, "jax_softplus": _jax_softplus}


@contextlib.contextmanager
def baseline(name):
    """The baseline's module attributes in place while the block runs (tracing and compiling)."""
    with contextlib.ExitStack() as stack:
        for module, attrs in BASELINES[name]().items():
            stack.enter_context(mock.patch.multiple(module, **attrs))
        yield


def ab(workload, name, rounds, seconds):
    exp, mesh, host = measure.prepare(workload)
    variants = {}
    for variant in ("baseline", "current"):
        with baseline(name) if variant == "baseline" else contextlib.nullcontext():
            variants[variant] = measure.compile_workload(exp, mesh, host)
    # The same function (the ELBO on the same parameters, batch and key agrees to float rounding), another
    # program. The parameters are the initial ones plus N(0, 0.05^2) noise: a U-Net starts with a zero output
    # layer, which would hide a difference.
    params = variants["current"]["state"].params
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = tree.unflatten([a + 0.05 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])
    elbos = {v: np.asarray(w["elbo"](params, *w["elbo_args"])) for v, w in variants.items()}
    checks = {"elbo_max_abs_diff": float(np.max(np.abs(elbos["current"] - elbos["baseline"]))),
              "elbo_max_abs": float(np.max(np.abs(elbos["current"]))),
              "programs_differ": variants["current"]["train"].as_text() != variants["baseline"]["train"].as_text()}
    figures = {v: {"train_steps_per_sec": [], "elbo_examples_per_sec": []} for v in variants}
    k, b = exp.config.training.steps_per_call, exp.config.training.batch_size
    for _ in range(rounds):
        for v, w in variants.items():
            figures[v]["train_steps_per_sec"].append(rate(w["do_train"], seconds) * k)
            figures[v]["elbo_examples_per_sec"].append(rate(w["do_elbo"], seconds / 2) * b)
    medians = {v: {key: statistics.median(a) for key, a in f.items()} for v, f in figures.items()}
    return {"workload": workload, "baseline": name, "baseline_is": BASELINES[name].__doc__.split("\n")[0],
            "rounds": rounds, "seconds": seconds, **checks, "rounds_figures": figures, "median": medians,
            "ratio": {key: medians["current"][key] / medians["baseline"][key] for key in medians["current"]},
            "compile_seconds": {v: [w["train_compile_seconds"], w["elbo_compile_seconds"]]
                                for v, w in variants.items()},
            **measure.runtime()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=sorted(measure.WORKLOADS), default="digits")
    p.add_argument("--baseline", choices=sorted(BASELINES), required=True, help="the code as it was")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds (each: baseline, then current)")
    p.add_argument("--seconds", type=float, default=2.0, help="train seconds per variant and round (ELBO: half)")
    args = p.parse_args()
    print(json.dumps(ab(args.workload, args.baseline, args.rounds, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
