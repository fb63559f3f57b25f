"""Passes over a data split: the ELBO with repeats (to a target standard error), the probability-flow ODE,
the exact NLL (gmm2d), and paired differences. The trainer's periodic evaluation and scripts/evaluate.py
both call these, so the number logged during training and the number reported later come from one code.

Every estimate is the mean over the examples of a per-example value (in the experiment's unit, see
experiment.py). Its standard error is the standard deviation of the per-example values over sqrt(number of
examples): it counts both the spread of the test set and the Monte-Carlo noise of the estimator. Two
estimators are compared through their paired difference on the same examples, in which that spread cancels.

Random draws: batch i, repeat r of a pass uses fold_in(fold_in(key, i), r), key = pass_key(seed, step, name).
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffvar import data as data_lib
from diffvar import distributed
from diffvar.errors import SolverError

PASSES = ("ism", "dsm", "ode")


def pass_key(seed, step, name):
    """The PRNG key of the pass `name` (one of PASSES) over a split at checkpoint `step`."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), step), PASSES.index(name))


def batch_size(configured, max_examples, num_devices, num_examples=0):
    """The evaluation batch for a pass over num_examples (the split's size; 0: unknown), or its first
    max_examples: the fewest batches of at most `configured` that cover them, made equal in size, rounded up
    to the device count. 297 digits test examples at 256: 2 batches of 150 (300 computed, not 2 x 256)."""
    n = min([k for k in (num_examples, max_examples) if k], default=0)
    b = -(-n // -(-n // configured)) if n else configured
    return -(-b // num_devices) * num_devices


def split_batches(exp, mesh, split, batch_size, max_examples=0):
    """[(x global [batch_size, ...] sharded over 'data', mask np bool [batch_size])] covering `split` once
    (its first max_examples examples when > 0). This process loads only its rows of each batch."""
    nproc, pid = jax.process_count(), jax.process_index()
    out, seen = [], 0
    for x, mask in data_lib.iterate_split(exp.config.data, split, batch_size, pid, nproc):
        gmask = distributed.gather(jnp.asarray(mask))
        if max_examples:
            gmask = gmask & (seen + np.cumsum(gmask) <= max_examples)
        seen += int(gmask.sum())
        out.append((distributed.global_array(mesh, x), gmask))
        if max_examples and seen >= max_examples:
            break
    return out


def compile(fn, *args):
    """(AOT-compiled jitted fn for these argument shapes and shardings, seconds spent compiling). Hold on to
    the result: calling it never compiles again."""
    start = time.time()
    compiled = fn.lower(*args).compile()
    return compiled, time.time() - start


def mean_stderr(values):
    """(mean, standard error of the mean) of per-example values np [N] (s.e. NaN for N < 2)."""
    values = np.asarray(values, np.float64)
    n = values.size
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def paired_difference(a, b):
    """(mean, s.e.) of a - b over the same examples (per-example values [N] each)."""
    return mean_stderr(np.asarray(a, np.float64) - np.asarray(b, np.float64))


def _stats(total, total_sq, repeats):
    """Mean and s.e. of the per-example averages, the Monte-Carlo part of that s.e., and the floor no number of
    repeats goes below (the spread of the examples themselves); from per-example sums over repeats."""
    means = total / repeats
    mean, se = mean_stderr(means)
    out = {"mean": mean, "stderr": se}
    if repeats > 1:
        n = means.size
        within = np.maximum(total_sq - repeats * means**2, 0.0) / (repeats - 1)  # per-example MC variance
        mc_var = within.mean() / repeats
        out["mc_stderr"] = float(math.sqrt(mc_var / n))
        out["floor_stderr"] = float(math.sqrt(max(se**2 - mc_var / n, 0.0))) if n > 1 else math.nan
    return out


def elbo(compiled, params, key, batches, repeats=1, target_stderr=0.0, max_repeats=1000, progress=None):
    """Negative ELBO over `batches` with `compiled` (experiment.make_elbo_fn, compiled): dict with mean, stderr,
    mc_stderr and floor_stderr (repeats >= 2), repeats, num_examples, seconds and values (per-example
    averages, np [N]).

    Every example gets `repeats` independent draws. With target_stderr > 0, whole passes continue until the
    s.e. is at most target_stderr, or max_repeats is reached, or the target is below the floor set by the
    spread of the examples themselves; the dict says which (target_reached, stop_reason).
    """
    start = time.time()
    total = [np.zeros(int(m.sum())) for _, m in batches]
    total_sq = [np.zeros(int(m.sum())) for _, m in batches]
    r, stop_reason = 0, None
    while True:
        for i, (x, mask) in enumerate(batches):
            k = jax.random.fold_in(jax.random.fold_in(key, i), r)
            v = np.asarray(distributed.gather(compiled(params, x, k)), np.float64)[mask]
            total[i] += v
            total_sq[i] += v * v
            if progress:
                progress.say("ELBO: pass %d, batch %d/%d, %.1f s", r + 1, i + 1, len(batches), time.time() - start)
        r += 1
        st = _stats(np.concatenate(total), np.concatenate(total_sq), r)
        if r < repeats:
            continue
        if not target_stderr:
            break
        if st["stderr"] <= target_stderr:
            stop_reason = "target reached"
        elif r >= max_repeats:
            stop_reason = f"max_repeats={max_repeats} reached"
        elif r >= 2 and st["floor_stderr"] >= target_stderr:
            stop_reason = (f"the examples' own spread puts the standard error's floor at {st['floor_stderr']:.4g} "
                           f"> target {target_stderr:.4g}: more repeats cannot reach it (evaluate more examples)")
        if stop_reason:
            break
        if progress:
            progress.say("ELBO: %d repeats, s.e. %.4g > target %.4g: another pass", r, st["stderr"], target_stderr,
                         force=True)
    out = dict(st, repeats=r, num_examples=int(sum(t.size for t in total)), seconds=time.time() - start,
               values=np.concatenate(total) / r)
    if target_stderr:
        out.update(target_stderr=float(target_stderr), target_reached=st["stderr"] <= target_stderr,
                   stop_reason=stop_reason)
    return out


def ode(compiled, params, key, batches, progress=None, max_steps=4096):
    """Probability-flow ODE -log p over `batches` with `compiled` (experiment.make_ode_fn, compiled): dict with
    mean, stderr, nfe (mean over batches of the solver's drift evaluations), nfe_max, num_examples, seconds,
    values (per example, np [N])."""
    start = time.time()
    values, nfes = [], []
    for i, (x, mask) in enumerate(batches):
        v, nfe = compiled(params, x, jax.random.fold_in(key, i))
        if int(nfe) < 0:  # likelihood.ode_logp's mark of a solve that ran out of steps
            raise SolverError(f"the ODE solver needed more than {max_steps} steps at this tolerance; loosen "
                              f"--ode_rtol/--ode_atol")
        v = np.asarray(distributed.gather(v), np.float64)[mask]
        values.append(v)
        nfes.append(int(nfe))
        if progress:
            progress.say("ODE: batch %d/%d, NFE %d, %.1f s", i + 1, len(batches), nfes[-1], time.time() - start)
    values = np.concatenate(values)
    mean, se = mean_stderr(values)
    return {"mean": mean, "stderr": se, "nfe": float(np.mean(nfes)), "nfe_max": int(max(nfes)),
            "num_examples": int(values.size), "seconds": time.time() - start, "values": values}


def exact_nll(exp, batches):
    """Mean, s.e. and per-example values of -log p(x) in nats under the data's exact density (gmm2d), else None."""
    if exp.info.exact_logp is None:
        return None
    values = np.concatenate([-np.asarray(exp.info.exact_logp(jnp.asarray(distributed.gather(x))), np.float64)[m]
                             for x, m in batches])
    mean, se = mean_stderr(values)
    return {"mean": mean, "stderr": se, "values": values}
