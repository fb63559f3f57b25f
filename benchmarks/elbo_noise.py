"""Monte-Carlo noise of the ELBO per second of evaluation, for each variance-reduction scheme; prints JSON.

    nice python benchmarks/elbo_noise.py --workdir=runs/readme [--max_examples=150 --passes=8]

Two workloads, each scheme timed side by side in this one process:
- digits: the checkpoint's EMA parameters, experiment.make_elbo_fn (the evaluation's own function: uniform
  dequantization, bpd), on the first max_examples test examples in one batch;
- mixture16: a 16-D Gaussian mixture (diffvar.mixture.random_mixture, seed 16) with its exact score,
  elbo.elbo on 256 of its draws, in nats.
A pass gives every example one independent unit (the mean of a scheme's draws). Over `passes` passes:
mc_var = the per-example variance of a unit (mean over examples), seconds = the median wall time of a pass.
The figure of merit is work-normalised variance, mc_var x seconds; se_in_1s = sqrt(mc_var x seconds / N), the
Monte-Carlo s.e. of the set's mean after one second of such passes; speedup = plain's mc_var x seconds / the
scheme's (how many times faster it reaches a given s.e.). Each scheme's mean is printed too (with its s.e.):
the schemes estimate the same number.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffvar import checkpoints, distributed, evaluator, experiment
from diffvar.elbo import ElboOptions, elbo
from diffvar.mixture import random_mixture, score_fn_for
from diffvar.sde import VPSDE

# name -> ElboOptions / elbo keywords. "plain" is the evaluation's default before these schemes existed.
SCHEMES = {
    "plain": dict(form="ism", time_sampling="uniform"),
    "iid4": dict(form="ism", time_sampling="uniform", draws=4),
    "strat4": dict(form="ism", time_sampling="uniform", draws=4, stratified=True),
    "iid8": dict(form="ism", time_sampling="uniform", draws=8),
    "strat8": dict(form="ism", time_sampling="uniform", draws=8, stratified=True),
    "strat16": dict(form="ism", time_sampling="uniform", draws=16, stratified=True),
    "probes4": dict(form="ism", time_sampling="uniform", probes=4),
    "is": dict(form="ism", time_sampling="importance"),
    "is_strat4": dict(form="ism", time_sampling="importance", draws=4, stratified=True),
    "is_probes4": dict(form="ism", time_sampling="importance", probes=4),
    "dsm_is": dict(form="dsm", time_sampling="importance"),
    "dsm_is_strat4": dict(form="dsm", time_sampling="importance", draws=4, stratified=True),
}


def measure(fn, x, passes):
    """(values np [passes, N], median seconds of a pass) of fn(x, key) -> [N], after one untimed call."""
    jax.block_until_ready(fn(x, jax.random.PRNGKey(10**6)))
    values, seconds = [], []
    for r in range(passes):
        start = time.perf_counter()
        values.append(np.asarray(jax.block_until_ready(fn(x, jax.random.PRNGKey(r))), np.float64))
        seconds.append(time.perf_counter() - start)
    return np.stack(values), float(np.median(seconds))


def summarise(values, seconds):
    """The figures of one scheme from its values [passes, N] and seconds per pass."""
    n = values.shape[1]
    mc_var = float(values.var(axis=0, ddof=1).mean())
    means = values.mean(axis=0)
    return {
        "mean": float(means.mean()),
        "stderr": float(means.std(ddof=1) / math.sqrt(n)),
        "mc_var": mc_var,
        "seconds": seconds,
        "var_x_seconds": mc_var * seconds,
        "se_in_1s": math.sqrt(mc_var * seconds / n),
    }


def digits_functions(workdir, max_examples):
    """({scheme: fn(x, key) -> per-example bpd}, x [N, ...]) for the workdir's checkpoint."""
    mesh = distributed.make_mesh()
    exp, params, step, _ = checkpoints.restore_params(workdir, "latest", mesh)
    x, mask = evaluator.split_batches(exp, mesh, "test", max_examples, max_examples)[0]
    x = x[np.asarray(mask)]
    fns = {}
    for name, kw in SCHEMES.items():
        f = experiment.make_elbo_fn(exp, ElboOptions(**kw))
        fns[name] = lambda x, k, f=f: f(params, x, k)
    return fns, x, step


def mixture_functions(num=256):
    """({scheme: fn(x, key) -> per-example -ELBO in nats}, x [num, 16]) for the 16-D mixture's exact score."""
    sde = VPSDE()
    mix = random_mixture(jax.random.PRNGKey(16), 16)
    score = score_fn_for(mix, sde)
    x = mix.sample(jax.random.PRNGKey(0), num)
    fns = {}
    for name, kw in SCHEMES.items():
        fns[name] = jax.jit(lambda x, k, kw=kw: -elbo(score, sde, x, k, **kw))
    return fns, x, float(-jnp.mean(mix.logp(x)))


def run(fns, x, passes):
    out = {name: summarise(*measure(fn, x, passes)) for name, fn in fns.items()}
    base = out["plain"]["var_x_seconds"]
    for v in out.values():
        v["speedup"] = base / v["var_x_seconds"]
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="runs/readme")
    p.add_argument("--max_examples", type=int, default=150)
    p.add_argument("--passes", type=int, default=8)
    p.add_argument("--mixture_passes", type=int, default=40)
    p.add_argument("--only", default="", help="digits | mixture16 (default: both)")
    a = p.parse_args()
    res = {"schemes": SCHEMES, "device": jax.devices()[0].device_kind}
    if a.only in ("", "mixture16"):
        fns, x, exact = mixture_functions()
        res["mixture16"] = dict(
            run(fns, x, a.mixture_passes), exact_nll_nats=exact, num_examples=int(x.shape[0]), passes=a.mixture_passes
        )
    if a.only in ("", "digits"):
        fns, x, step = digits_functions(a.workdir, a.max_examples)
        res["digits"] = dict(run(fns, x, a.passes), step=step, num_examples=int(x.shape[0]), passes=a.passes)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
