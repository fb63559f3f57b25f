"""The evaluator: passes over a data split with given parameters, shared by the trainer and evaluate.py.

    ev = Evaluator(exp, mesh, EvalSpec.from_config(config))      # loads the split's batches once
    results = ev.run(params, step)                                # {"ism": est, "ode": est, "exact": est, ...}

Each estimate is a dict: mean, stderr, num_examples, seconds, compile_seconds and values (per example, np [N]),
plus its own settings. The trainer's periodic evaluation and scripts/evaluate.py run this one object, so the
number logged during training and the number reported later come from one piece of code; each estimator is
compiled once, at its first run, and reused (a training run evaluates many times).

Each estimate is the mean over the examples of a per-example value (in the experiment's unit), by the passes
of passes.py (their random draws, standard errors and stopping rules).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffvar import config as config_lib, data as data_lib, distributed, experiment, options
from diffvar.dequantization import DequantizationOptions
from diffvar.elbo import ElboOptions
from diffvar.errors import OptionError
from diffvar.ode import OdeOptions, trace_estimator
from diffvar.passes import elbo_pass, mean_stderr, ode_pass

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


def exact_nll(exp, batches):
    """Mean, s.e. and per-example values of -log p(x) in nats under the data's exact density (gmm2d), else None."""
    if exp.info.exact_logp is None:
        return None
    values = np.concatenate(
        [-np.asarray(exp.info.exact_logp(jnp.asarray(distributed.gather(x))), np.float64)[m] for x, m in batches]
    )
    mean, se = mean_stderr(values)
    return {"mean": mean, "stderr": se, "values": values}


def compile_ahead(fn, *args):
    """(fn lowered and compiled for these arguments' shapes and shardings, seconds spent compiling)."""
    start = time.time()
    compiled = fn.lower(*args).compile()
    return compiled, time.time() - start


def estimate_label(exp, spec, name, step, ema=True):
    """The label of estimate `name` ("ism", "dsm" or "ode") under `spec` at checkpoint `step`: the estimator and
    its options (as the options dataclass holds them), the dequantization and K, the transform and its
    constant, and `bound` (experiment.is_bound: whether the number is a lower bound on log P(x) in expectation,
    an upper bound in bpd; docs/likelihood.md). Times (t_min) are the reference schedule's (sde.truncation_time)."""
    discrete = exp.info.levels is not None
    deq = spec.deq_for(name, exp)
    t0 = deq.time if discrete else 0.0
    k = deq.importance_samples if discrete else 1
    if name == "ode":
        o = spec.ode_for(exp)
        est = dict(
            estimator="probability-flow ODE",
            solver="Tsit5 (adaptive)",
            **dataclasses.asdict(o),
            t_min=max(t0, exp.ode_t_min),
        )
        bound = experiment.is_bound("ode", k, o.divergence)
    else:
        est = dict(
            estimator="ELBO (lambda = 0 plug-in reverse SDE)",
            **dataclasses.asdict(spec.elbo_for(name)),
            t_min=t0,
            stderr="over examples of per-example means over passes (each pass one independent unit per example)",
        )
        bound = experiment.is_bound("elbo", k)
    d = exp.config.data
    deq_label = dict(
        dataclasses.asdict(deq),
        importance_samples=k,
        levels=exp.info.levels,
        transform=(d.transform if discrete else "none"),
        logit_alpha=(d.logit_alpha if discrete and d.transform == "logit" else None),
        bpd_constant=_bpd_constant(exp, deq) if discrete else "none: -log p(x) in nats",
    )
    if not discrete:
        deq_label["dequantization"] = "none (continuous data)"
    bound_of = ("the probability-flow ODE's" if name == "ode" else "the plug-in reverse SDE's") + (
        " discrete log P(x)" if discrete else " log p(x)"
    )
    return dict(
        est,
        **deq_label,
        bound=bound,
        bound_of=bound_of,
        sde=exp.config.sde.name,
        checkpoint_step=step,
        ema_params=ema,
        ema_decay=exp.config.training.ema_decay,
    )


def _bpd_constant(exp, deq):
    """In words: which constants turn the bound into bits/dim under this dequantization (docs/likelihood.md)."""
    if deq.dequantization == "uniform":
        return (
            f"bpd = -(log p_0(y) + log|dy/dz|) / (d ln 2) + log2 {exp.info.levels} (uniform q = "
            f"{exp.info.levels}^d / |dy/dz|)"
        )
    return (
        "bpd = -(log p_t(y) - log q(y|x)) / (d ln 2) at t = truncated_normal_t, log q the truncated normal's "
        "log-density (its mass term included); no log2 L, no Jacobian"
    )


# ----------------------------------------------------------------------------------------------
# What an evaluation computes, and the object that computes it.

LOOP = ("split", "seed", "batch_size", "max_examples", "repeats", "target_stderr", "max_repeats")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """An evaluation: its loop over the split, and each estimator's options (defined once, in the options
    dataclasses; config.ESTIMATORS says where they live in config.eval).

    elbo: one ElboOptions per ELBO form evaluated. ode: the ODE's options, or None (no ODE pass); its divergence
    "auto" is the exact trace up to ode.EXACT_TRACE_MAX_DIM dimensions or when importance_samples > 1, else
    Hutchinson. deq: the dequantization (images); its importance_samples K applies to the ODE alone: the ELBO
    forms are the plain bound (K = 1), a log-mean-exp of ELBO estimates is not a bound (experiment.is_bound).
    """

    split: str
    seed: int
    batch_size: int
    max_examples: int = 0
    repeats: int = 1
    target_stderr: float = 0.0
    max_repeats: int = 1000
    elbo: tuple = ()
    ode: OdeOptions | None = None
    deq: DequantizationOptions = DequantizationOptions()

    @property
    def forms(self):
        """The ELBO forms evaluated, in order."""
        return tuple(o.form for o in self.elbo)

    @classmethod
    def from_config(cls, config, forms=None, ode=False, **overrides):
        """The trainer's evaluation (config.eval, seed config.seed + 1: its form, no ODE), or with `forms`, `ode`
        and overrides by config.eval key name (LOOP, or an estimator option: draws, ode_rtol, ...; None: the
        config's). Without a time_sampling override the DSM form samples time by importance (its variance with
        uniform time is several times larger), the ISM form as eval.time_sampling says."""
        e = config.eval
        keys = set(LOOP) | {p + f.name for c, p, _ in config_lib.ESTIMATORS for f in dataclasses.fields(c)}
        unknown = sorted(set(overrides) - keys)
        if unknown:
            raise TypeError(f"EvalSpec.from_config got unknown options {unknown}; allowed: {sorted(keys)}")
        loop = dict({k: e[k] for k in LOOP if k in e}, seed=config.seed + 1)
        loop.update({k: overrides[k] for k in LOOP if overrides.get(k) is not None})
        opts = {
            c: options.from_section(c, e, p, **{f.name: overrides.get(p + f.name) for f in dataclasses.fields(c)})
            for c, p, _ in config_lib.ESTIMATORS
        }
        base = opts[ElboOptions]
        time = lambda f: base.time_sampling if f == "ism" or overrides.get("time_sampling") else "importance"
        elbo = tuple(dataclasses.replace(base, form=f, time_sampling=time(f)) for f in (forms or (e.form,)))
        return cls(
            **loop,
            elbo=elbo,
            ode=opts[OdeOptions] if ode else None,
            deq=opts[DequantizationOptions].resolved(config.data.dequantization),
        )

    def elbo_for(self, form):
        """The ElboOptions of ELBO form `form`."""
        return next(o for o in self.elbo if o.form == form)

    def ode_for(self, exp):
        """The ODE's options for exp's data, its trace resolved (ode.trace_estimator)."""
        k = self.deq.importance_samples if exp.info.levels is not None else 1
        return dataclasses.replace(self.ode, divergence=trace_estimator(self.ode.divergence, exp.dim, k))

    def deq_for(self, name, exp):
        """The dequantization of estimate `name`: K = importance_samples for the ODE, 1 for the ELBO forms."""
        return self.deq if name == "ode" else dataclasses.replace(self.deq, importance_samples=1)


class Evaluator:
    """Runs an EvalSpec's passes over one split: each ELBO form, the ODE (spec.ode), the exact NLL (gmm2d).

    Built once per program: the split's batches are loaded here; each estimator is compiled at its first run.
    `score` (params -> score_fn) replaces the network, so a known score (a Gaussian mixture's) goes through
    exactly the same code.
    """

    def __init__(self, exp, mesh, spec, score=None):
        self.exp, self.spec, self.score = exp, spec, score
        if spec.ode is not None and exp.info.levels is not None:
            try:
                experiment.check_importance_samples("ode", spec.deq.importance_samples, spec.ode_for(exp).divergence)
            except ValueError as e:
                raise OptionError(f"--{e} (--ode_divergence={spec.ode.divergence})") from None
        self.batch_size = batch_size(spec.batch_size, spec.max_examples, len(jax.devices()), exp.info.size(spec.split))
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
        deq = s.deq_for(name, exp)
        if name == "ode":
            fn = experiment.make_ode_fn(exp, s.ode_for(exp), deq, score=self.score)
        else:
            fn = experiment.make_elbo_fn(exp, s.elbo_for(name), deq, score=self.score)
        self._compiled[name], seconds = compile_ahead(fn, params, self.batches[0][0], key)
        return self._compiled[name], seconds

    def label(self, name, step, ema=True):
        """How the estimate `name` (an ELBO form or "ode") is computed: a JSON-ready dict (evaluate.describe
        words it)."""
        return estimate_label(self.exp, self.spec, name, step, ema)

    def run(self, params, step, repeats=None, progress=None, stop=None):
        """{form: est for each ELBO form, "ode": est (spec.ode), "exact": est (gmm2d)}; repeats overrides the
        spec's (the trainer's final evaluation); Interrupted as soon as `stop()` is true after a batch. Each
        est carries its label (its settings: estimate_label)."""
        s = self.spec
        out = {}
        for form in s.forms:
            key = pass_key(s.seed, step, form)
            compiled, seconds = self._compiled_fn(form, params, key)
            est = elbo_pass(
                compiled,
                params,
                key,
                self.batches,
                repeats or s.repeats,
                s.target_stderr,
                s.max_repeats,
                progress,
                stop,
            )
            out[form] = dict(est, compile_seconds=seconds, label=self.label(form, step))
        if s.ode is not None:
            key = pass_key(s.seed, step, "ode")
            compiled, seconds = self._compiled_fn("ode", params, key)
            est = ode_pass(compiled, params, key, self.batches, progress, s.ode.max_steps, stop=stop)
            out["ode"] = dict(est, compile_seconds=seconds, label=self.label("ode", step))
        if self.exact is not None:
            out["exact"] = self.exact
        return out
