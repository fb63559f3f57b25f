"""The evaluator: passes over a data split with given parameters, shared by the trainer and evaluate.py.

    ev = Evaluator(exp, mesh, EvalSpec.from_config(config))      # loads the split's batches once
    results = ev.run(params, step)                                # {"ism": est, "ode": est, "exact": est, ...}

Each estimate is a dict: mean, stderr, num_examples, seconds, compile_seconds and values (per example, np [N]),
plus its own settings. The trainer's periodic evaluation and scripts/evaluate.py run this one object, so the
number logged during training and the number reported later come from one piece of code; each estimator is
compiled once, at its first run, and reused (a training run evaluates many times).

Every estimate is the mean over the examples of a per-example value (in the experiment's unit). Its standard
error is the standard deviation of the per-example values over sqrt(number of examples): it counts both the
spread of the test set and the Monte-Carlo noise. Two estimators are compared through their paired difference
on the same examples, in which that spread cancels.

Random draws: batch i, repeat r of a pass uses fold_in(fold_in(key, i), r), key = pass_key(seed, step, name).
A pass prints a progress line with its ETA (when given a logs.Progress) and checks `stop()` after every batch:
Interrupted ends it there (the trainer's SIGTERM).
"""
from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffvar import data as data_lib
from diffvar import distributed, experiment, likelihood, logs
from diffvar.errors import OptionError, SolverError

PASSES = ("ism", "dsm", "ode")
EXACT_TRACE_MAX_DIM = 16  # ode_divergence="auto": the exact trace (d JVPs) up to this many dimensions


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
        return (f"the examples' own spread puts the standard error's floor at {st['floor_stderr']:.4g} > target "
                f"{target_stderr:.4g}: more repeats cannot reach it (evaluate more examples)")
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


def elbo_pass(compiled, params, key, batches, repeats=1, target_stderr=0.0, max_repeats=1000, progress=None,
              stop=None):
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
            _tick(progress, stop, start, r * len(batches) + i + 1, max(repeats, r + 1) * len(batches),
                  "ELBO: pass %d/%d, batch %d/%d", r + 1, max(repeats, r + 1), i + 1, len(batches))
        r += 1
        st = _stats(np.concatenate(total), np.concatenate(total_sq), r)
        if r < repeats:
            continue
        stop_reason = _stop_reason(st, r, target_stderr, max_repeats) if target_stderr else "repeats done"
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


def ode_pass(compiled, params, key, batches, progress=None, max_steps=4096, stop=None):
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
        values.append(np.asarray(distributed.gather(v), np.float64)[mask])
        nfes.append(int(nfe))
        _tick(progress, stop, start, i + 1, len(batches), "ODE: batch %d/%d, NFE %d", i + 1, len(batches), nfes[-1])
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


def compile_ahead(fn, *args):
    """(fn lowered and compiled for these arguments' shapes and shardings, seconds spent compiling)."""
    start = time.time()
    compiled = fn.lower(*args).compile()
    return compiled, time.time() - start


def estimate_label(exp, spec, name, step, ema=True):
    """The label of estimate `name` ("ism", "dsm" or "ode") under `spec` at checkpoint `step`: the estimator and
    its settings, the dequantization and K, the transform and its constant, and `bound` (experiment.is_bound:
    whether the number is a lower bound on log P(x) in expectation, an upper bound in bpd; docs/likelihood.md).
    Times (t_min) are the reference schedule's (sde.truncation_time)."""
    discrete = exp.info.levels is not None
    t0 = likelihood.dequantization_time(spec.dequantization, exp.config.objective.t_eps) if discrete else 0.0
    k = spec.importance_samples_for(name) if discrete else 1
    divergence = spec.ode_divergence_for(exp.dim) if name == "ode" else spec.divergence
    bound = dict(bound=experiment.is_bound("ode" if name == "ode" else "elbo", k, divergence),
                 bound_of=("the probability-flow ODE's" if name == "ode" else "the plug-in reverse SDE's")
                 + (" discrete log P(x)" if discrete else " log p(x)"))
    if name == "ode":
        steps = "one step size per example" if spec.ode_step_size == "per_example" else "one step size per batch"
        est = dict(estimator="probability-flow ODE", solver=f"Tsit5 (adaptive, {steps})", rtol=spec.ode_rtol,
                   atol=spec.ode_atol, t_min=max(t0, exp.ode_t_min), divergence=spec.ode_divergence_for(exp.dim),
                   probe=spec.probe)
    else:
        est = dict(estimator="ELBO (lambda = 0 plug-in reverse SDE)", form=name, t_min=t0,
                   time_sampling=spec.time_sampling_for(name), divergence=spec.divergence, probe=spec.probe,
                   probes=spec.probes, draws_per_pass=spec.draws, stratified=spec.stratified,
                   stderr="over examples of per-example means over passes (each pass one "
                   "independent unit per example)")
    d = exp.config.data
    deq = dict(dequantization=spec.dequantization if discrete else "none (continuous data)",
               importance_samples=k, levels=exp.info.levels,
               transform=(d.transform if discrete else "none"),
               logit_alpha=(d.logit_alpha if discrete and d.transform == "logit" else None),
               bpd_constant=_bpd_constant(exp, spec) if discrete else "none: -log p(x) in nats")
    return dict(est, **deq, **bound, sde=exp.config.sde.name, checkpoint_step=step, ema_params=ema,
                ema_decay=exp.config.training.ema_decay)


def _bpd_constant(exp, spec):
    """In words: which constants turn the bound into bits/dim under this dequantization (docs/likelihood.md)."""
    if spec.dequantization == "uniform":
        return (f"bpd = -(log p_0(y) + log|dy/dz|) / (d ln 2) + log2 {exp.info.levels} (uniform q = "
                f"{exp.info.levels}^d / |dy/dz|)")
    return ("bpd = -(log p_t_eps(y) - log q(y|x)) / (d ln 2), log q the truncated normal's log-density "
            "(its mass term included); no log2 L, no Jacobian")


# ----------------------------------------------------------------------------------------------
# What an evaluation computes, and the object that computes it.


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """The settings of an evaluation; from_config() takes the run's eval config, with overrides.

    forms: ELBO forms, a subset of ("ism", "dsm"). time_sampling: None gives the ISM form the config's and
    the DSM form importance sampling (its variance with uniform time is several times larger).
    ode_divergence "auto": the exact trace up to EXACT_TRACE_MAX_DIM dimensions or when importance_samples > 1,
    else Hutchinson. importance_samples K applies to the ODE alone; the ELBO forms are the plain bound (K = 1):
    a log-mean-exp of ELBO estimates is not a bound (experiment.is_bound).
    """

    split: str
    forms: tuple
    repeats: int
    probe: str
    divergence: str
    seed: int
    batch_size: int
    max_examples: int = 0
    time_sampling: str | None = None
    config_time_sampling: str = "uniform"
    ode: bool = False
    ode_rtol: float = 1e-5
    ode_atol: float = 1e-5
    ode_divergence: str = "auto"
    ode_step_size: str = "batch"
    target_stderr: float = 0.0
    max_repeats: int = 1000
    dequantization: str = "uniform"
    importance_samples: int = 1
    draws: int = 4
    stratified: bool = True
    probes: int = 1

    @classmethod
    def from_config(cls, config, **overrides):
        """The trainer's evaluation (config.eval, seed config.seed + 1); overrides that are None are ignored."""
        e = config.eval
        spec = dict(split=e.split, forms=(e.form,), repeats=e.repeats, probe=e.probe, divergence=e.divergence,
                    seed=config.seed + 1, batch_size=e.batch_size, max_examples=e.max_examples,
                    config_time_sampling=e.time_sampling, dequantization=e.dequantization,
                    importance_samples=e.importance_samples, draws=e.draws, stratified=e.stratified, probes=e.probes)
        spec.update({k: v for k, v in overrides.items() if v is not None})
        if spec["dequantization"] == "auto":  # the bound matched to how the model was trained
            spec["dequantization"] = likelihood.MATCHED_DEQUANTIZATION[config.data.dequantization]
        return cls(**spec)

    def time_sampling_for(self, form):
        """The time proposal's name for ELBO form `form`."""
        return self.time_sampling or (self.config_time_sampling if form == "ism" else "importance")

    def importance_samples_for(self, name):
        """K of the estimate `name`: importance_samples for the ODE, 1 for the ELBO forms."""
        return self.importance_samples if name == "ode" else 1

    def ode_divergence_for(self, dim):
        """The ODE's trace estimator for data of `dim` dimensions (exact when K > 1: the only bound there)."""
        if self.ode_divergence != "auto":
            return self.ode_divergence
        return "exact" if dim <= EXACT_TRACE_MAX_DIM or self.importance_samples > 1 else "hutchinson"


class Evaluator:
    """Runs an EvalSpec's passes over one split: each ELBO form, the ODE (spec.ode), the exact NLL (gmm2d).

    Built once per program: the split's batches are loaded here; each estimator is compiled at its first run.
    `score` (params -> score_fn) replaces the network, so a known score (a Gaussian mixture's) goes through
    exactly the same code.
    """

    def __init__(self, exp, mesh, spec, score=None):
        self.exp, self.spec, self.score = exp, spec, score
        if spec.ode and exp.info.levels is not None:
            try:
                experiment.check_importance_samples("ode", spec.importance_samples, spec.ode_divergence_for(exp.dim))
            except ValueError as e:
                raise OptionError(f"--{e} (--ode_divergence={spec.ode_divergence})") from None
        self.batch_size = batch_size(spec.batch_size, spec.max_examples, len(jax.devices()),
                                     exp.info.size(spec.split))
        self.batches = split_batches(exp, mesh, spec.split, self.batch_size, spec.max_examples)
        self.num_examples = int(sum(m.sum() for _, m in self.batches))
        self.dataset = data_lib.label(exp.config.data, spec.split)  # name, version, split, count, verified
        self.exact = exact_nll(exp, self.batches)
        self._compiled = {}

    def _compiled_fn(self, name, params, key):
        """(the compiled estimator of pass `name`, seconds spent compiling it now: 0 after its first run)."""
        if name in self._compiled:
            return self._compiled[name], 0.0
        s, exp = self.spec, self.exp
        deq = dict(dequantization=s.dequantization, importance_samples=s.importance_samples_for(name))
        if name == "ode":
            fn = experiment.make_ode_fn(exp, s.ode_rtol, s.ode_atol, s.ode_divergence_for(exp.dim), s.probe,
                                        score=self.score, step_size=s.ode_step_size, **deq)
        else:
            fn = experiment.make_elbo_fn(exp, name, s.time_sampling_for(name), s.probe, s.divergence, self.score,
                                         draws=s.draws, stratified=s.stratified, probes=s.probes,
                                         **deq)
        self._compiled[name], seconds = compile_ahead(fn, params, self.batches[0][0], key)
        return self._compiled[name], seconds

    def label(self, name, step, ema=True):
        """How the estimate `name` (an ELBO form or "ode") is computed: a JSON-ready dict (evaluate.describe
        words it)."""
        return estimate_label(self.exp, self.spec, name, step, ema)

    def run(self, params, step, repeats=None, progress=None, stop=None):
        """{form: est for each ELBO form, "ode": est (spec.ode), "exact": est (gmm2d)}; repeats overrides the
        spec's (the trainer's final evaluation); Interrupted as soon as `stop()` is true after a batch."""
        s = self.spec
        out = {}
        for form in s.forms:
            key = pass_key(s.seed, step, form)
            compiled, seconds = self._compiled_fn(form, params, key)
            est = elbo_pass(compiled, params, key, self.batches, repeats or s.repeats, s.target_stderr,
                            s.max_repeats, progress, stop)
            out[form] = dict(est, compile_seconds=seconds, form=form, time_sampling=s.time_sampling_for(form),
                             divergence=s.divergence, probe=s.probe, label=self.label(form, step))
        if s.ode:
            key = pass_key(s.seed, step, "ode")
            compiled, seconds = self._compiled_fn("ode", params, key)
            est = ode_pass(compiled, params, key, self.batches, progress, stop=stop)
            label = self.label("ode", step)  # its t_min: max(the dequantization's t0, the model's smallest t)
            out["ode"] = dict(est, compile_seconds=seconds, rtol=s.ode_rtol, atol=s.ode_atol, probe=s.probe,
                              divergence=s.ode_divergence_for(self.exp.dim), t_min=label["t_min"], label=label,
                              step_size=s.ode_step_size)
        if self.exact is not None:
            out["exact"] = self.exact
        return out
