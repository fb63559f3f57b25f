"""Passes over batches: an estimator's per-example values, their mean and standard error, and when to stop.

    est = elbo_pass(compiled, params, key, batches, repeats=4, target_stderr=0.01)   # {mean, stderr, values, ...}
    est = ode_pass(compiled, params, key, batches)                                   # ... and nfe, nfe_max

Batch i, repeat r uses fold_in(fold_in(key, i), r). The standard error is the standard deviation of the
per-example values over sqrt(number of examples); two estimators compare through their paired difference.
A pass prints a progress line with its ETA (given a logs.Progress) and checks `stop()` after every batch:
Interrupted ends it there (the trainer's SIGTERM).
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from diffvar import distributed, logs
from diffvar.errors import SolverError


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


def _stop_reason(st, repeats, target_stderr, max_repeats):
    """Why repeats stop after `repeats` passes with statistics `st`, or None to continue."""
    if st["stderr"] <= target_stderr:
        return "target reached"
    if repeats >= max_repeats:
        return f"max_repeats={max_repeats} reached"
    if repeats >= 2 and st["floor_stderr"] >= target_stderr:
        return (
            f"the examples' own spread puts the standard error's floor at {st['floor_stderr']:.4g} > target "
            f"{target_stderr:.4g}: more repeats cannot reach it (evaluate more examples)"
        )
    return None


class Interrupted(Exception):
    """A pass stopped because `stop()` said so (the trainer's SIGTERM)."""


def _tick(progress, stop, start, done, total, fmt, *args):
    """After each batch: a progress line (rate-limited by `progress`) ending in the pass's ETA from `done` of
    `total` batches, then Interrupted if `stop()`."""
    if progress:
        eta = (time.time() - start) * (total - done) / done
        progress.say(fmt + ", %.1f s, ETA %s", *args, time.time() - start, logs.fmt_time(eta))
    if stop and stop():
        raise Interrupted()


def elbo_pass(compiled, params, key, batches, repeats=1, target_stderr=0.0, max_repeats=1000, progress=None, stop=None):
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
            _tick(
                progress,
                stop,
                start,
                r * len(batches) + i + 1,
                max(repeats, r + 1) * len(batches),
                "ELBO: pass %d/%d, batch %d/%d",
                r + 1,
                max(repeats, r + 1),
                i + 1,
                len(batches),
            )
        r += 1
        st = _stats(np.concatenate(total), np.concatenate(total_sq), r)
        if r < repeats:
            continue
        stop_reason = _stop_reason(st, r, target_stderr, max_repeats) if target_stderr else "repeats done"
        if stop_reason:
            break
        if progress:
            progress.say(
                "ELBO: %d repeats, s.e. %.4g > target %.4g: another pass", r, st["stderr"], target_stderr, force=True
            )
    out = dict(
        st,
        repeats=r,
        num_examples=int(sum(t.size for t in total)),
        seconds=time.time() - start,
        values=np.concatenate(total) / r,
    )
    if target_stderr:
        out.update(
            target_stderr=float(target_stderr), target_reached=st["stderr"] <= target_stderr, stop_reason=stop_reason
        )
    return out


def ode_pass(compiled, params, key, batches, progress=None, max_steps=4096, stop=None):
    """Probability-flow ODE -log p over `batches` with `compiled` (experiment.make_ode_fn, compiled): dict with
    mean, stderr, nfe (mean over batches of the solver's drift evaluations), nfe_max, num_examples, seconds,
    values (per example, np [N])."""
    start = time.time()
    values, nfes = [], []
    for i, (x, mask) in enumerate(batches):
        v, nfe = compiled(params, x, jax.random.fold_in(key, i))
        if int(nfe) < 0:  # ode.ode_logp's mark of a solve that ran out of steps
            raise SolverError(
                f"the ODE solver needed more than {max_steps} steps at this tolerance; loosen --ode_rtol/--ode_atol"
            )
        values.append(np.asarray(distributed.gather(v), np.float64)[mask])
        nfes.append(int(nfe))
        _tick(progress, stop, start, i + 1, len(batches), "ODE: batch %d/%d, NFE %d", i + 1, len(batches), nfes[-1])
    values = np.concatenate(values)
    mean, se = mean_stderr(values)
    return {
        "mean": mean,
        "stderr": se,
        "nfe": float(np.mean(nfes)),
        "nfe_max": int(max(nfes)),
        "num_examples": int(values.size),
        "seconds": time.time() - start,
        "values": values,
    }
