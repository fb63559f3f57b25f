"""Checkpoint evaluation: the ELBO in both forms, the exact probability-flow ODE likelihood, and samples.

    exp, params, step = restore(workdir, "latest")          # read-only: never writes under checkpoints/
    result = run_eval(workdir, step="best", forms=("ism", "dsm"), ode=True)   # -> dict, eval/<step>.json

Every estimate is a mean over the examples of a split of a per-example value, in bits per dimension for
images (bpd = -(log p(y) + log|dy/dz|) / (d ln 2) + log2 K, an upper bound on the discrete NLL) and in nats
per example (the negative log-likelihood) for the 2-D toys. Its standard error is the standard deviation of
the per-example values over sqrt(number of examples): it counts both the spread of the test set and the
Monte-Carlo noise of the estimator (time, noise, probe and dequantization draws).

- ELBO (lambda = 0 plug-in reverse SDE), ISM form and DSM form: unbiased estimates of the same number for any
  score; each example's value is averaged over `repeats` independent draws.
- ODE: log p of the probability-flow ODE (lambda = 1) with the same score, by an adaptive solver (diffrax
  Tsit5), exact trace for small d and Hutchinson otherwise; one dequantization and probe draw per example.
  It is the exact likelihood of a *different* model than the ELBO bounds; with the exact score the two agree.

The result also holds the differences between the estimators (and, for gmm2d, to the exact -log p(x)) on the
same examples with paired standard errors, in which the spread of the examples cancels: whether two estimates
disagree is read off those, not off the separate standard errors. The ODE solves each batch as one system
(diffrax's error norm is over the whole batch), so its per-example values are accurate to about the solver
tolerance on average, not each one; the mean is what is reported.

The estimators take `score`, a function params -> score_fn(y, t), defaulting to the checkpoint's network
(exp.score_fn), so a known score (e.g. a Gaussian mixture's) can be evaluated through exactly the same code.
"""
from __future__ import annotations

import datetime
import gc
import logging
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from diffvar import data as data_lib
from diffvar import likelihood, plots, sampling
from diffvar import train as train_lib
from diffvar.files import atomic_path, write_json_atomic

FORMS = ("ism", "dsm")
TIME_SAMPLINGS = ("uniform", "importance")
ODE_DIVERGENCES = ("auto",) + likelihood.DIVERGENCES
EXACT_TRACE_MAX_DIM = 16  # ode_divergence="auto": the exact trace (d JVPs) up to this many dimensions


class EvalError(RuntimeError):
    """A problem the user can fix (no checkpoint, missing step, bad option, unreadable checkpoint): one line."""


def say(fmt, *args):
    if jax.process_index() == 0:
        train_lib.say(fmt, *args)


# ----------------------------------------------------------------------------------------------
# Restoring (read-only).


def parse_step(spec):
    """'latest' | 'best' | an integer step (int or decimal string) -> 'latest' | 'best' | int."""
    if isinstance(spec, str) and spec.strip().lower() in ("latest", "best"):
        return spec.strip().lower()
    try:
        step = int(spec)
    except (TypeError, ValueError):
        raise EvalError(f"--checkpoint_step={spec!r} must be a step number, 'latest' or 'best'") from None
    if step < 0:
        raise EvalError(f"--checkpoint_step={spec!r} must be a step number >= 0, 'latest' or 'best'")
    return step


def make_mesh():
    """A 1-D 'data' mesh over all devices (Auto axis: shardings follow the arguments)."""
    return jax.sharding.Mesh(np.array(jax.devices()), ("data",))


def load_experiment(workdir):
    """(config, Experiment, keys filled with defaults) from workdir/config.json; EvalError when it is missing
    or unusable.

    Built for one device: the training run's batch sizes need not divide this machine's device count.
    """
    if not os.path.isdir(workdir):
        raise EvalError(f"workdir {workdir!r} does not exist")
    try:
        config = train_lib.load_config(workdir)
    except FileNotFoundError as e:
        raise EvalError(str(e)) from None
    except ValueError as e:
        raise EvalError(f"{os.path.join(workdir, 'config.json')} is not valid JSON: {e}") from None
    config, filled = with_current_defaults(config)
    try:
        exp = train_lib.build(config, 1)
    except (train_lib.ConfigError, data_lib.DataNotPreparedError, ValueError, KeyError) as e:
        raise EvalError(f"the config in {os.path.join(workdir, 'config.json')} cannot be built: {e}") from None
    return config, exp, filled


def with_current_defaults(config):
    """(config with keys added since the run was made filled from configs/base.py, those keys' names).

    A run's config.json holds the keys of the code that trained it; a key introduced later takes its current
    default (which, for a new feature, means the old behaviour). Without configs/ importable, unchanged.
    """
    try:
        from configs.base import get_base
    except ImportError:
        return config, []
    merged, filled = get_base(), []

    def walk(base, saved, prefix):
        for key in base.keys():
            if key not in saved:
                filled.append(prefix + key)
            elif isinstance(base[key], ml_collections.ConfigDict) and isinstance(saved[key], ml_collections.ConfigDict):
                walk(base[key], saved[key], prefix + key + ".")

    walk(merged, config, "")
    merged.update(config)  # recursive: every saved value wins, saved-only keys are kept
    return merged, filled


def resolve_step(mngr, spec, ckpt_dir):
    """The checkpoint step `spec` ('latest' | 'best' | int) names in a read-only manager, or EvalError."""
    steps = sorted(mngr.all_steps())
    if not steps:
        raise EvalError(f"no checkpoint in {ckpt_dir}: nothing to evaluate (train first, or check --workdir)")
    spec = parse_step(spec)
    if spec == "latest":
        return steps[-1]
    if spec == "best":
        try:
            best = train_lib.best_step(mngr)
        except Exception as e:  # an unreadable meta item
            raise EvalError(f"cannot read the checkpoints' metadata in {ckpt_dir} to find the best step: "
                            f"{_first_line(e)}") from None
        if best is None:
            raise EvalError(f"no checkpoint in {ckpt_dir} has a test metric, so there is no 'best' one; "
                            f"use --checkpoint_step=latest or one of: {_steps_list(steps)}")
        return best
    if spec not in steps:
        raise EvalError(f"no checkpoint at step {spec} in {ckpt_dir}; available steps: {_steps_list(steps)}")
    return spec


def restore(workdir, step="latest", mesh=None):
    """(exp, EMA params replicated on `mesh`, step) of a training workdir; opens its checkpoints read-only.

    Config keys newer than the run take their current defaults (exp.filled_keys lists them).

    Raises EvalError (one line) for a workdir without config.json or checkpoints, a missing step (listing the
    available ones) and a checkpoint that cannot be read or holds implausible values (see _implausible).
    """
    config, exp, filled = load_experiment(workdir)
    ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise EvalError(f"no checkpoint in {ckpt_dir}: the directory does not exist (train first, or check --workdir)")
    mngr = train_lib.checkpoint_manager(workdir, read_only=True)
    failure = None
    try:
        step = resolve_step(mngr, step, ckpt_dir)
        mesh = mesh or make_mesh()
        replicated = NamedSharding(mesh, P())
        abstract = jax.eval_shape(lambda: train_lib.init_state(exp, config.seed))
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)
        try:
            state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as e:  # noqa: BLE001 - any failure to read is reported the same way
            failure = _root_message(e)
    finally:
        mngr.close()
    if failure is not None:
        _collect_quietly()  # orbax's abandoned read coroutines would otherwise print tracebacks later
        raise EvalError(f"the checkpoint at step {step} in {ckpt_dir} cannot be read (corrupt, incomplete, or "
                        f"written for another model config): {failure}")
    problem = _implausible(state)
    if problem:
        raise EvalError(f"the checkpoint at step {step} in {ckpt_dir} is corrupt: {problem}")
    params = state.ema_params
    object.__setattr__(exp, "filled_keys", filled)  # Experiment is frozen; this is metadata for the report
    return exp, params, int(step)


def _steps_list(steps, limit=20):
    if len(steps) <= limit:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[:limit // 2])) + ", ..., " + ", ".join(map(str, steps[-limit // 2:]))


def _first_line(e):
    text = (str(e).strip().splitlines() or [""])[0] or type(e).__name__
    text = text.split(" See full TensorStore details")[0]
    return text if len(text) <= 400 else text[:397] + "..."


def _root_message(e):
    """The most specific line of an exception chain (TensorStore's reason rather than orbax's wrapper)."""
    chain = [e]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return _first_line(chain[-1]) if str(chain[-1]).strip() else _first_line(e)


def _collect_quietly():
    """Garbage-collects with the reports of orbax's abandoned reads silenced: failed coroutines (unraisable
    exceptions) and failed asyncio tasks (logged as "Task exception was never retrieved")."""
    hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
    log = logging.getLogger("asyncio")
    level, log.level = log.level, logging.CRITICAL + 1
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook
        log.setLevel(level)


MAX_PARAM_MAGNITUDE = 1e8  # no trained network has weights this large; random bytes read as float32 do
MAX_STATE_MAGNITUDE = 1e12  # optimizer moments (of clipped or finite-loss gradients)


def _implausible(state):
    """A description of non-finite values in the restored state, or of parameters too large to be trained
    weights (what overwritten bytes look like: orbax stores no checksums); None when it looks sound."""
    named = jax.tree_util.tree_leaves_with_path(state)
    for path, leaf in named:
        a = np.asarray(leaf)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        name = jax.tree_util.keystr(path)
        if not np.all(np.isfinite(a)):
            return f"{name} holds non-finite values"
        limit = MAX_PARAM_MAGNITUDE if "params" in name else MAX_STATE_MAGNITUDE
        if a.size and np.max(np.abs(a)) > limit:
            return f"{name} holds values as large as {np.max(np.abs(a)):.3g} (> {limit:g}: not what training writes)"
    return None


# ----------------------------------------------------------------------------------------------
# Per-example estimators (compiled) and the passes over a split.


def unit_of(exp):
    """'bpd' for discrete (image) data, 'nats' (per example) for continuous toys."""
    return "bpd" if exp.info.levels is not None else "nats"


def to_unit(exp, logp_y, logdet):
    """Per-example log p(y) [B] (+ the data->model log-det) -> bpd for images, negative log p in nats for toys."""
    if exp.info.levels is None:
        return -logp_y
    return likelihood.bpd(logp_y, logdet, exp.dim, exp.info.levels)


def make_elbo_fn(exp, form, time_sampling, probe, divergence, score=None):
    """(params, x [B, ...] data, rng) -> per-example negative ELBO [B] in the report unit (one draw).

    x is dequantized (and logit-transformed) into model space y with log|dy/dz| as during training; `score`
    maps params to score_fn(y, t) (default: the network, exp.score_fn).
    """
    score = score or exp.score_fn

    def fn(params, x, rng):
        k_pre, k_elbo = jax.random.split(rng)
        y, logdet = exp.to_model_space(k_pre, x)
        value = likelihood.elbo(score(params), exp.sde, y, k_elbo, num_samples=1, form=form, divergence=divergence,
                                probe=probe, time_sampling=time_sampling, t_eps=exp.config.objective.t_eps)
        return to_unit(exp, value, logdet)

    return jax.jit(fn)


def make_ode_fn(exp, rtol, atol, divergence, probe, t_min=0.0, max_steps=4096, score=None, prior_logp=None):
    """(params, x [B, ...] data, rng) -> (per-example -log p in the report unit [B], NFE) by the probability-flow
    ODE on the whole batch (one dequantization and, for Hutchinson, one probe per example)."""
    score = score or exp.score_fn

    def fn(params, x, rng):
        k_pre, k_ode = jax.random.split(rng)
        y, logdet = exp.to_model_space(k_pre, x)
        logp, nfe = likelihood.ode_logp(score(params), exp.sde, y, k_ode, rtol=rtol, atol=atol,
                                        divergence=divergence, probe=probe, t_min=t_min, max_steps=max_steps,
                                        prior_logp=prior_logp)
        return to_unit(exp, logp, logdet), nfe

    return jax.jit(fn)


def split_batches(exp, mesh, split, batch_size, max_examples=0):
    """[(x global [batch_size, ...] sharded over 'data', mask np bool [batch_size])] covering `split` once
    (its first max_examples examples when > 0). This process loads only its rows of each batch."""
    nproc, pid = jax.process_count(), jax.process_index()
    out, seen = [], 0
    for x, mask in data_lib.iterate_split(exp.config.data, split, batch_size, pid, nproc):
        gmask = train_lib._gather(jnp.asarray(mask))
        if max_examples:
            gmask = gmask & (seen + np.cumsum(gmask) <= max_examples)
        seen += int(gmask.sum())
        out.append((train_lib._global_array(mesh, x, P("data")), gmask))
        if max_examples and seen >= max_examples:
            break
    return out


def _compile(fn, *args):
    """(AOT-compiled fn for these argument shapes/shardings, seconds spent compiling)."""
    start = time.time()
    compiled = fn.lower(*args).compile()
    return compiled, time.time() - start


def _stats(total, total_sq, repeats):
    """Mean, s.e. over examples of the per-example averages, the Monte-Carlo part of that s.e., and the floor
    no number of repeats goes below (the spread of the examples themselves); from per-example sums."""
    n = total.size
    means = total / repeats
    var_between = means.var(ddof=1) if n > 1 else math.nan
    out = {"mean": float(means.mean()), "stderr": float(math.sqrt(var_between / n)) if n > 1 else math.nan}
    if repeats > 1:
        within = np.maximum(total_sq - repeats * means**2, 0.0) / (repeats - 1)  # per-example MC variance
        mc_var = within.mean() / repeats
        out["mc_stderr"] = float(math.sqrt(mc_var / n))
        out["floor_stderr"] = float(math.sqrt(max(var_between - mc_var, 0.0) / n)) if n > 1 else math.nan
    return out


class _Progress:
    """Progress lines at most every `every` seconds (and whenever forced)."""

    def __init__(self, enabled, every=2.0):
        self.enabled, self.every, self.last = enabled, every, -math.inf

    def __call__(self, fmt, *args, force=False):
        if self.enabled and (force or time.time() - self.last >= self.every):
            say(fmt, *args)
            self.last = time.time()


def estimate_elbo(exp, params, rng, batches, form="ism", time_sampling="uniform", probe="rademacher",
                  divergence="hutchinson", repeats=1, target_stderr=0.0, max_repeats=1000, score=None,
                  progress=False):
    """Negative ELBO over `batches` (from split_batches): dict with mean, stderr (over examples and repeats),
    mc_stderr (Monte-Carlo part, repeats >= 2), repeats, num_examples, seconds, compile_seconds, and values
    (the per-example averages, np [N]).

    Every example gets `repeats` independent draws. With target_stderr > 0, whole passes over the split
    continue until the standard error is at most target_stderr, or max_repeats is reached, or the target is
    below the floor set by the spread of the examples themselves (more repeats cannot reach it); the dict
    says which (target_reached, stop_reason).
    """
    fn = make_elbo_fn(exp, form, time_sampling, probe, divergence, score)
    key = lambda i, r: jax.random.fold_in(jax.random.fold_in(rng, i), r)
    show = _Progress(progress)
    compiled, compile_seconds = _compile(fn, params, batches[0][0], key(0, 0))
    start = time.time()
    total = [np.zeros(int(m.sum())) for _, m in batches]
    total_sq = [np.zeros(int(m.sum())) for _, m in batches]
    n = sum(t.size for t in total)
    r, stop_reason = 0, None
    while True:
        for i, (x, mask) in enumerate(batches):
            v = np.asarray(train_lib._gather(compiled(params, x, key(i, r))), np.float64)[mask]
            total[i] += v
            total_sq[i] += v * v
            show("%s ELBO: pass %d, batch %d/%d, %.1f s", form.upper(), r + 1, i + 1, len(batches), time.time() - start)
        r += 1
        st = _stats(np.concatenate(total), np.concatenate(total_sq), r)
        if r < repeats:
            continue
        if not target_stderr:
            break
        if st["stderr"] <= target_stderr:
            stop_reason = "target reached"
            break
        if r >= max_repeats:
            stop_reason = f"max_repeats={max_repeats} reached"
            break
        if r >= 2 and st["floor_stderr"] >= target_stderr:
            stop_reason = (f"the examples' own spread puts the standard error's floor at {st['floor_stderr']:.4g} "
                           f"> target {target_stderr:.4g}: more repeats cannot reach it (evaluate more examples)")
            break
        show("%s ELBO: %d repeats, s.e. %.4g > target %.4g: another pass", form.upper(), r, st["stderr"],
             target_stderr, force=True)
    seconds = time.time() - start
    out = dict(st, repeats=r, num_examples=n, seconds=seconds, compile_seconds=compile_seconds, form=form,
               time_sampling=time_sampling, divergence=divergence, probe=probe,
               values=np.concatenate(total) / r)
    if target_stderr:
        out.update(target_stderr=float(target_stderr), target_reached=st["stderr"] <= target_stderr,
                   stop_reason=stop_reason)
    return out


def estimate_ode(exp, params, rng, batches, rtol=1e-5, atol=1e-5, divergence="exact", probe="rademacher",
                 t_min=0.0, max_steps=4096, score=None, prior_logp=None, progress=False):
    """Probability-flow ODE -log p (bpd / nats) over `batches`: dict with mean, stderr (over examples), nfe
    (mean over batches of the solver's drift evaluations), nfe_max, num_examples, seconds, compile_seconds,
    values (per example, np [N])."""
    fn = make_ode_fn(exp, rtol, atol, divergence, probe, t_min, max_steps, score, prior_logp)
    show = _Progress(progress)
    compiled, compile_seconds = _compile(fn, params, batches[0][0], jax.random.fold_in(rng, 0))
    start = time.time()
    values, nfes = [], []
    for i, (x, mask) in enumerate(batches):
        try:
            v, nfe = compiled(params, x, jax.random.fold_in(rng, i))
            v = np.asarray(train_lib._gather(v), np.float64)[mask]
        except Exception as e:
            if "max_steps" in str(e) or "maximum number of solver steps" in str(e):
                raise EvalError(f"the ODE solver needed more than {max_steps} steps at rtol={rtol}, atol={atol}; "
                                f"loosen --ode_rtol/--ode_atol") from None
            raise
        values.append(v)
        nfes.append(int(nfe))
        show("ODE: batch %d/%d, NFE %d, %.1f s", i + 1, len(batches), nfes[-1], time.time() - start)
    values = np.concatenate(values)
    n = values.size
    return {"mean": float(values.mean()), "stderr": float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            "nfe": float(np.mean(nfes)), "nfe_max": int(max(nfes)), "num_examples": n,
            "seconds": time.time() - start, "compile_seconds": compile_seconds, "rtol": rtol, "atol": atol,
            "divergence": divergence, "probe": probe, "t_min": t_min, "values": values}


def exact_nll(exp, batches):
    """Mean, s.e. and per-example values of -log p(x) in nats under the data's exact density (gmm2d), else None."""
    if exp.info.exact_logp is None:
        return None
    values = np.concatenate([-np.asarray(exp.info.exact_logp(jnp.asarray(train_lib._gather(x))), np.float64)[m]
                             for x, m in batches])
    return {"mean": float(values.mean()), "stderr": float(values.std(ddof=1) / math.sqrt(values.size)),
            "values": values}


def paired_difference(a, b):
    """(mean, s.e.) of a - b over the same examples (per-example values [N] each): the spread of the examples,
    common to both, cancels, so this s.e. says whether two estimators disagree."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


# ----------------------------------------------------------------------------------------------
# The whole evaluation: options, run, JSON, table.


def default_ode_t_min(exp):
    """0 for drift/score networks; 1e-5 for eps networks, whose score -eps / sigma is infinite at t = 0."""
    return 1e-5 if exp.config.model.parameterization == "eps" else 0.0


def check_options(*, split=None, forms=("ism", "dsm"), repeats=None, time_sampling=None, probe=None,
                  divergence=None, ode_rtol=1e-5, ode_atol=1e-5, ode_divergence="auto", target_stderr=0.0,
                  max_repeats=1000, max_examples=0, batch_size=None, num_devices=1):
    """Raises EvalError naming the flag and what it allows; None means "the run's config" and is not checked."""
    def choice(flag, value, allowed):
        if value is not None and value not in allowed:
            raise EvalError(f"--{flag}={value!r} is not allowed; choose one of {', '.join(allowed)}")

    def number(flag, value, minimum, integer=False, strict=False):
        if value is None:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > minimum if strict else value >= minimum) and (not integer or float(value).is_integer())
        if not ok:
            raise EvalError(f"--{flag}={value!r} must be {'an integer' if integer else 'a number'} "
                            f"{'>' if strict else '>='} {minimum}")

    choice("split", split, data_lib.SPLITS)
    if not forms:
        raise EvalError("--form selects no ELBO form; choose one of ism, dsm, both")
    for f in forms:
        choice("form", f, FORMS + ("both",))
    number("repeats", repeats, 1, integer=True)
    number("max_repeats", max_repeats, 1, integer=True)
    choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    choice("probe", probe, likelihood.PROBES)
    choice("divergence", divergence, likelihood.DIVERGENCES)
    choice("ode_divergence", ode_divergence, ODE_DIVERGENCES)
    number("ode_rtol", ode_rtol, 0, strict=True)
    number("ode_atol", ode_atol, 0, strict=True)
    number("target_stderr", target_stderr, 0)
    number("max_examples", max_examples, 0, integer=True)
    number("batch_size", batch_size, 1, integer=True)
    if batch_size is not None and batch_size % num_devices:
        raise EvalError(f"--batch_size={batch_size} must be divisible by the number of devices ({num_devices})")


def run_eval(workdir, step="latest", *, split=None, forms=("ism", "dsm"), repeats=None, time_sampling=None,
             probe=None, divergence=None, ode=True, ode_rtol=1e-5, ode_atol=1e-5, ode_divergence="auto",
             target_stderr=0.0, max_repeats=1000, max_examples=0, batch_size=None, seed=0, progress=True,
             write=True, score=None):
    """Evaluates a checkpoint of `workdir`; returns the result dict and (process 0, write=True) writes it to
    workdir/eval/<step>.json atomically. Writes nothing else; the checkpoints are opened read-only.

    Defaults come from the run's config.json (eval section): split, repeats, probe, divergence, batch_size,
    time_sampling for the ISM form; the DSM form uses importance time sampling unless time_sampling is given
    (its variance with uniform time is several times larger). `score` (params -> score_fn) replaces the
    network, for tests with a known score.
    """
    ndev = len(jax.devices())
    options = dict(time_sampling=time_sampling, ode_rtol=ode_rtol, ode_atol=ode_atol, ode_divergence=ode_divergence,
                   target_stderr=target_stderr, max_repeats=max_repeats, max_examples=max_examples, num_devices=ndev)
    check_options(split=split, forms=forms, repeats=repeats, probe=probe, divergence=divergence,
                  batch_size=batch_size, **options)  # before anything is read
    parse_step(step)
    mesh = make_mesh()
    exp, params, step = restore(workdir, step, mesh)
    e = exp.config.eval
    split = split or e.split
    repeats = e.repeats if repeats is None else repeats
    probe, divergence = probe or e.probe, divergence or e.divergence
    forms = tuple(dict.fromkeys(FORMS if "both" in forms else forms))
    if batch_size is None:  # the run's eval batch (no larger than needed), rounded up to this device count
        batch_size = min(e.batch_size, max_examples) if max_examples else e.batch_size
        batch_size = -(-batch_size // ndev) * ndev
    check_options(split=split, forms=forms, repeats=repeats, probe=probe, divergence=divergence,
                  batch_size=batch_size, **options)  # the values taken from the run's config
    unit = unit_of(exp)
    rng = jax.random.PRNGKey(seed)
    batches = split_batches(exp, mesh, split, batch_size, max_examples)
    num_examples = int(sum(m.sum() for _, m in batches))
    if num_examples < 2:
        raise EvalError(f"--max_examples={max_examples}: at least 2 examples are needed for a standard error")
    say("evaluating %s step %d on %s/%s: %d examples, batch %d, %d device(s); unit: %s", workdir, step,
        exp.info.name, split, num_examples, batch_size, ndev, "bits/dim" if unit == "bpd" else "nats per example")

    res = {"workdir": os.path.abspath(workdir), "step": step, "dataset": exp.info.name, "split": split,
           "unit": unit if unit == "bpd" else "nats per example (the bpd_* fields hold nats for 2-D toy data)",
           "num_examples": num_examples, "batch_size": batch_size, "num_devices": ndev, "seed": seed,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "jax_version": jax.__version__, "device_kind": jax.devices()[0].device_kind,
           "config_keys_filled_with_defaults": exp.filled_keys}
    estimates = {}
    for i, form in enumerate(forms):
        ts = time_sampling or (e.time_sampling if form == "ism" else "importance")
        say("%s-form ELBO (%s time, %s divergence), %d repeat(s)%s ...", form.upper(), ts, divergence, repeats,
            f", until s.e. <= {target_stderr:g}" if target_stderr else "")
        est = estimate_elbo(exp, params, jax.random.fold_in(rng, i), batches, form, ts, probe, divergence, repeats,
                            target_stderr, max_repeats, score, progress)
        estimates[form] = est
        say("%s-form ELBO: %.5f +- %.5f %s (%d repeats, %.1f s + %.1f s compile)%s", form.upper(), est["mean"],
            est["stderr"], unit, est["repeats"], est["seconds"], est["compile_seconds"],
            f"; {est['stop_reason']}" if est.get("stop_reason") and not est["target_reached"] else "")
        res.update({f"bpd_elbo_{form}": est["mean"], f"bpd_elbo_{form}_stderr": est["stderr"],
                    f"elbo_{form}": est, f"seconds_elbo_{form}": est["seconds"]})
    primary = forms[0]
    res.update(bpd_elbo=res[f"bpd_elbo_{primary}"], bpd_elbo_stderr=res[f"bpd_elbo_{primary}_stderr"],
               elbo_form=primary)
    if ode:
        ode_div = ode_divergence if ode_divergence != "auto" else (
            "exact" if exp.dim <= EXACT_TRACE_MAX_DIM else "hutchinson")
        t_min = default_ode_t_min(exp)
        say("probability-flow ODE (Tsit5, rtol %g, atol %g, %s trace) ...", ode_rtol, ode_atol, ode_div)
        est = estimate_ode(exp, params, jax.random.fold_in(rng, 100), batches, ode_rtol, ode_atol, ode_div, probe,
                           t_min, score=score, progress=progress)
        estimates["ode"] = est
        say("ODE: %.5f +- %.5f %s, mean NFE %.0f (%.1f s + %.1f s compile)", est["mean"], est["stderr"], unit,
            est["nfe"], est["seconds"], est["compile_seconds"])
        res.update(bpd_ode=est["mean"], bpd_ode_stderr=est["stderr"], nfe=est["nfe"], ode=est,
                   seconds_ode=est["seconds"])
    exact = exact_nll(exp, batches)
    if exact is not None:
        estimates["exact"] = exact
        res.update(exact_nll_nats=exact["mean"], exact_nll_nats_stderr=exact["stderr"])
    # Differences on the same examples, with paired standard errors: do the estimators agree?
    names = [n for n in ("ism", "dsm", "ode") if n in estimates]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]] + [(n, "exact") for n in names if exact]
    res["differences"] = {}
    for a, b in pairs:
        d, se = paired_difference(estimates[a]["values"], estimates[b]["values"])
        res["differences"][f"{a}-{b}"] = {"mean": d, "stderr": se}
    for name, est in estimates.items():
        est.pop("values")
    if write and jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        path = os.path.join(workdir, "eval", f"{step}.json")
        write_json_atomic(path, res)
        res["path"] = path
    return res


def format_table(res):
    """The result as a plain-text table: estimator, value +- s.e., NFE / repeats, wall time."""
    unit = "bpd" if res["unit"] == "bpd" else "nats"
    rows = [("estimator", f"{unit} (lower is better)", "s.e.", "repeats/NFE", "seconds")]
    for form in FORMS:
        if f"elbo_{form}" in res:
            est = res[f"elbo_{form}"]
            rows.append((f"ELBO, {form.upper()} form ({est['time_sampling']} t)", f"{est['mean']:.5f}",
                         f"{est['stderr']:.5f}", f"{est['repeats']} rep", f"{est['seconds']:.1f}"))
    if "ode" in res:
        est = res["ode"]
        rows.append((f"ODE ({est['divergence']} trace)", f"{est['mean']:.5f}", f"{est['stderr']:.5f}",
                     f"{est['nfe']:.0f} NFE", f"{est['seconds']:.1f}"))
    if "exact_nll_nats" in res:
        rows.append(("exact -log p(x) (data)", f"{res['exact_nll_nats']:.5f}", f"{res['exact_nll_nats_stderr']:.5f}",
                     "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [f"{res['dataset']} {res['split']} split, step {res['step']}, {res['num_examples']} examples; "
           f"{res['unit']}", line(rows[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]
    if res.get("differences"):
        out.append("differences on the same examples, with paired s.e."
                   + (" (EXACT: the data's -log p(x)):" if "exact_nll_nats" in res else ":"))
        for key, v in res["differences"].items():
            a, b = key.upper().split("-")
            z = f" ({abs(v['mean']) / v['stderr']:.1f} s.e.)" if v["stderr"] > 0 else ""
            out.append(f"  {a} - {b}: {v['mean']:+.5f} +- {v['stderr']:.5f}{z}")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Samples.


def check_sampling(lam, steps, num):
    """Raises EvalError for lam outside [0, 1], steps < 1 or num < 1 (naming the flag)."""
    if not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and 0.0 <= lam <= 1.0):
        raise EvalError(f"--lam={lam!r} must be in [0, 1] (0: reverse SDE ... 1: probability-flow ODE)")
    for flag, value in (("steps", steps), ("num", num)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise EvalError(f"--{flag}={value!r} must be an integer >= 1")


def draw_samples(exp, params, rng, num, lam=0.0, steps=1000, ode=False, rtol=1e-5, atol=1e-5, score=None):
    """(samples in data space np [num, ...] (images in [0, 1]), NFE or None).

    ode=False: the lambda-family Euler-Maruyama sampler with `steps` steps; ode=True: the probability-flow ODE
    by an adaptive solver (lam and steps unused). Both stop at t = objective.t_eps.
    """
    score = score or exp.score_fn
    shape = (num,) + exp.info.shape
    t_min = exp.config.objective.t_eps
    if ode:
        fn = jax.jit(lambda p, k: sampling.sample_ode(score(p), exp.sde, k, shape, rtol=rtol, atol=atol, t_min=t_min))
        y, nfe = fn(params, rng)
        nfe = int(nfe)
    else:
        check_sampling(lam, steps, num)
        fn = jax.jit(lambda p, k: sampling.sample_lambda(score(p), exp.sde, k, shape, lam=lam, steps=steps,
                                                         t_min=t_min))
        y, nfe = fn(params, rng), None
    return np.asarray(exp.to_data_space(y)), nfe


def save_samples(exp, samples, png_path, npz_path, title=None, **meta):
    """PNG grid (images; quantized to the data's levels) or scatter over the exact density (2-D), and an .npz
    with `samples` and `meta` (both written atomically)."""
    if exp.info.levels is None:
        logp = (lambda p: np.asarray(exp.info.exact_logp(jnp.asarray(p)))) if exp.info.exact_logp else None
        plots.save_scatter_2d(png_path, samples, logp_fn=logp, title=title)
    else:
        plots.save_image_grid(png_path, samples, levels=exp.info.levels)
    os.makedirs(os.path.dirname(os.path.abspath(npz_path)), exist_ok=True)
    with atomic_path(npz_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, samples=samples, **{k: np.asarray(v) for k, v in meta.items() if v is not None})
