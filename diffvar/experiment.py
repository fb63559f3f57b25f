"""A config turned into pure functions: the Experiment, its train state and step, its per-example estimators.

    exp = build(config)                           # validates; reads dataset metadata; compiles nothing
    state = init_state(exp, config.seed)
    step = make_train_step(exp)                   # jitted (state, batches [K, B, ...]) -> (state, losses [K])
    elbo = make_elbo_fn(exp, ElboOptions(draws=4))  # jitted (params, x [B, ...], rng) -> [B] in exp.unit
    draw = make_sampler(exp, num=64)              # jitted (params, rng) -> (samples in data space, NFE or -1)

Nothing here touches devices or files: the runtime (evaluator, checkpoints, plots) and the programs
(train, evaluate) call these. Report unit: bits/dim for discrete image data (an upper bound on the discrete
NLL: bpd = -(log p(y) + log|dy/dz|) / (d ln 2) + log2 K), nats per example (-log p) for 2-D toys.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from diffvar import config as config_lib, data as data_lib, dequantization, elbo as elbo_lib, ode as ode_lib, sampling
from diffvar.dequantization import DequantizationOptions
from diffvar.elbo import ElboOptions
from diffvar.errors import ConfigError
from diffvar.models import make_model
from diffvar.models.param import make_score_fn
from diffvar.objectives import get_objective
from diffvar.ode import OdeOptions
from diffvar.schedule import make_schedule, optimizer
from diffvar.sde import SDE


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a config determines that is not state: static metadata and pure functions."""

    config: ml_collections.ConfigDict
    info: data_lib.DataInfo
    schedule: object  # schedule.FixedSchedule | LearnedSchedule: params["schedule"]
    model: object  # flax module: apply({"params": p}, y, t, train=...)
    loss_fn: Callable  # loss_fn(score_fn, sde, y [B, ...], rng) -> [B]
    tx: optax.GradientTransformation  # over {"network": ..., "schedule": ...}
    learning_rate: optax.Schedule  # step -> the network's learning rate

    @property
    def dim(self) -> int:
        """d, the number of data dimensions."""
        return math.prod(self.info.shape)

    @property
    def unit(self) -> str:
        """'bpd' for discrete (image) data, 'nats' (per example) for continuous toys."""
        return "bpd" if self.info.levels is not None else "nats"

    def sde_of(self, params: dict) -> SDE:
        """The forward SDE of params = {"network": ..., "schedule": ...}."""
        return self.schedule.sde(params["schedule"])

    def apply(self, params: dict, y: jax.Array, t: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Network output [B, ...] at network time t [B]; dropout is active when a dropout rng is given."""
        kwargs = dict(train=True, rngs={"dropout": rng}) if rng is not None else {}
        return self.model.apply({"params": params["network"]}, y, t, **kwargs)

    def score_fn(self, params: dict, rng: jax.Array | None = None) -> Callable:
        """score_fn(y, t) of these parameters: the network and its output's map to a score (drift / g, -eps /
        sigma) both run at r = sde.network_time(t) on the schedule's reference clock, so with a learned
        schedule the score is a function of (y, gamma(t)) alone whatever the parameterisation (for a fixed one
        r = t)."""
        sde, reference = self.sde_of(params), self.schedule.reference
        fn = make_score_fn(lambda p, y, r: self.apply(p, y, r, rng), reference, self.config.model.parameterization)
        return lambda y, t: fn(params, y, sde.network_time(t))

    def to_model_space(self, rng: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Data x [B, ...] -> (y [B, ...], log|dy/dz| [B]): dequantized (and transformed) for images, x for toys."""
        d = self.config.data
        return dequantization.to_model_space(rng, x, self.info.levels, d.transform, d.logit_alpha, d.dequantization)

    def to_data_space(self, y: jax.Array) -> jax.Array:
        """Model-space samples -> [0, 1] images (or the 2-D points themselves)."""
        if self.info.levels is None:
            return y
        return dequantization.inverse_transform(y, self.config.data.transform, self.config.data.logit_alpha)

    @property
    def ode_t_min(self) -> float:
        """0 for drift/score networks; 1e-5 for eps networks, whose score -eps / sigma is infinite at t = 0."""
        return 1e-5 if self.config.model.parameterization == "eps" else 0.0


def make_optimizer(
    cfg: ml_collections.ConfigDict, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax chain, schedule): optional global-norm clipping, then Adam/AdamW on a warm-up (+ cosine) schedule."""
    if cfg.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1), num_steps)
    elif cfg.warmup_steps:
        schedule = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    else:
        schedule = optax.constant_schedule(cfg.lr)
    if cfg.name == "adamw":
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    else:
        opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    clip = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
    return optax.chain(*clip, opt), schedule


def build(config: ml_collections.ConfigDict, num_devices: int = 1) -> Experiment:
    """Validates the config and builds the Experiment (reads dataset metadata; compiles nothing).

    Raises ConfigError (a bad value, naming its key) or DataNotPreparedError (an image dataset that is not
    prepared in data.data_dir).
    """
    config_lib.validate(config, num_devices)
    info = data_lib.get_info(config.data)
    o = config.objective
    objective = functools.partial(get_objective, o.name, t_eps=o.t_eps, probe=o.probe)
    try:
        schedule = make_schedule(**config.sde)
        model = make_model(config.model, info.shape)
        objective(schedule.reference)
    except ValueError as e:  # a combination validate() cannot see alone (e.g. a U-Net too deep for the image)
        raise ConfigError(str(e)) from None
    network_tx, learning_rate = make_optimizer(config.optim, config.training.num_steps)
    tx = optimizer(network_tx, schedule.optimizer(learning_rate))
    loss_fn = lambda score_fn, sde, y, rng: objective(sde)(score_fn, y, rng)
    return Experiment(config, info, schedule, model, loss_fn, tx, learning_rate)


# ----------------------------------------------------------------------------------------------
# Train state and step.


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: dict
    ema_params: dict
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32[2] key


def init_state(exp: Experiment, seed: int) -> TrainState:
    """The initial TrainState (parameters from PRNGKey(seed)), built by one compiled program (op by op, each of
    init's operations would be compiled on its own: seconds for a U-Net; the values are the same)."""
    return jax.jit(functools.partial(_init_state, exp))(jax.random.PRNGKey(seed))


def _init_state(exp: Experiment, key: jax.Array) -> TrainState:
    k_init, k_state = jax.random.split(key)
    network = exp.model.init(k_init, jnp.zeros((2,) + exp.info.shape), jnp.ones((2,)))["params"]
    params = {"network": network, "schedule": exp.schedule.init(jax.random.fold_in(k_init, 1))}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=exp.tx.init(params),
        rng=k_state,
    )


def abstract_state(exp: Experiment, sharding: jax.sharding.Sharding) -> TrainState:
    """ShapeDtypeStructs of the TrainState, each with `sharding` (what a checkpoint restores into)."""
    shapes = jax.eval_shape(lambda: init_state(exp, exp.config.seed))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), shapes)


def per_example_loss(exp: Experiment, params: dict, x: jax.Array, rng: jax.Array) -> jax.Array:
    """The objective's loss of each example of a data batch x [B, ...], [B]."""
    k_pre, k_loss, k_drop = jax.random.split(rng, 3)
    y, _ = exp.to_model_space(k_pre, x)
    return exp.loss_fn(exp.score_fn(params, k_drop), exp.sde_of(params), y, k_loss)


def loss_and_grads(exp: Experiment, params: dict, x: jax.Array, rng: jax.Array) -> tuple[jax.Array, dict]:
    """(mean loss, gradients) as the schedule sets them (schedule.value_and_grad: a learned schedule's interior
    descends the loss's variance)."""
    return exp.schedule.value_and_grad(lambda p: per_example_loss(exp, p, x, rng), params)


def ema_decay_at(decay: float, step: jax.Array | int) -> jax.Array:
    """The weight on the EMA before update number step + 1 that makes the EMA debiased (optax.ema's debias):
    decay (1 - decay^n) / (1 - decay^(n+1)), n = step. The EMA after n updates is then
    sum_i decay^(n-i) p_i / sum_i decay^(n-i) over the trained parameters p_1..p_n: nothing of the
    initialisation, at any step (undebiased, 0.999^716 = 49 % of it is left after 716 steps)."""
    n = jnp.asarray(step, jnp.float32)
    return decay * (1.0 - decay**n) / (1.0 - decay ** (n + 1.0))


def make_train_step(exp: Experiment) -> Callable:
    """Jitted (state, batch [K, B, ...]) -> (state, losses [K]): K optimizer steps in one call, state donated."""
    decay = exp.config.training.ema_decay

    def one_step(state, x):
        rng, k = jax.random.split(state.rng)
        value, grads = loss_and_grads(exp, state.params, x, jax.random.fold_in(k, state.step))
        updates, opt_state = exp.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = (
            optax.incremental_update(params, state.ema_params, 1.0 - ema_decay_at(decay, state.step))
            if decay
            else params
        )
        return TrainState(state.step + 1, params, ema, opt_state, rng), value

    def train_call(state, batches):
        """K = batches.shape[0] steps: the step itself for K = 1 (as flax's examples jit it), else a lax.scan
        (which amortises dispatch on accelerators; XLA:CPU runs convolutions inside any loop on a naive kernel,
        30x slower for the digits U-Net, jax-ml/jax#12868, open: so keep K = 1 there)."""
        if batches.shape[0] == 1:
            state, value = one_step(state, batches[0])
            return state, value[None]
        return jax.lax.scan(one_step, state, batches)

    # Shardings come from the arguments (state replicated, batch split over 'data'). Passing them to jit as
    # in/out_shardings instead makes XLA:CPU run this step ~15x slower on one device (measured, jax 0.10.2).
    return jax.jit(train_call, donate_argnums=(0,))


# ----------------------------------------------------------------------------------------------
# Per-example estimators. `score` maps params -> score_fn(y, t) (default: the network, exp.score_fn), so a
# known score (a Gaussian mixture's) runs through exactly the same code. Each takes its options once, as one
# object (elbo.ElboOptions, ode.OdeOptions, dequantization.DequantizationOptions).


def is_bound(estimator: str, importance_samples: int = 1, divergence: str = "exact") -> bool:
    """Whether an estimate is a lower bound on log P(x) in expectation with no assumption beyond the model's:
    estimator "elbo" or "ode" (divergence: the ODE's trace). K = 1: always (the ELBO is one, the ODE's
    log-density is exact or, with a Hutchinson trace, unbiased, and E_q[log p - log q] is linear in it);
    K > 1 only for the ODE with the exact trace (log-mean-exp of noisy estimates is biased upward)."""
    return importance_samples == 1 or (estimator == "ode" and divergence == "exact")


def check_importance_samples(estimator: str, importance_samples: int, divergence: str = "exact") -> None:
    """Raises ValueError (one line) for a K > 1 estimate that would not be a bound (is_bound)."""
    if not is_bound(estimator, importance_samples, divergence):
        what = "ELBO estimates" if estimator == "elbo" else "ODE log-densities with a Hutchinson trace"
        raise ValueError(
            f"importance_samples={importance_samples} with {what}: the log-mean-exp of noisy "
            f"log-densities is biased upward, not a bound; allowed: 1, or K > 1 with the ODE's exact "
            f"trace"
        )


def _bound_fn(exp, log_density, deq):
    """(params, x data, rng) -> (per-example value in exp.unit [B], aux [K, ...]) for log_density(params, rng, y,
    t0) -> (log p_{t0}(y) [B], aux): a bound on the discrete log P(x) (dequantization.importance_weighted_bound,
    K = deq.importance_samples) in bpd for images; -log p(x) in nats, K = 1, for continuous toys."""
    d = exp.config.data

    def fn(params, x, rng):
        if exp.info.levels is None:  # the key a K = 1 dequantization would score y with
            logp, aux = log_density(params, jax.random.split(rng)[1], x, 0.0)
            return -logp, jax.tree.map(lambda a: a[None], aux)
        bound, aux = dequantization.importance_weighted_bound(
            lambda r, y: log_density(params, r, y, deq.time),
            rng,
            x,
            exp.info.levels,
            deq.dequantization,
            deq.importance_samples,
            exp.sde_of(params),
            deq.truncated_normal_t,
            d.transform,
            d.logit_alpha,
        )
        return dequantization.bpd(bound, exp.dim), aux

    return fn


def make_elbo_fn(
    exp: Experiment,
    options: ElboOptions = ElboOptions(),
    deq: DequantizationOptions = DequantizationOptions(),
    score: Callable | None = None,
) -> Callable:
    """Jitted (params, x [B, ...] data, rng) -> per-example negative ELBO [B] in exp.unit (one pass).

    Images: x is dequantized (deq; "auto" is the one matched to data.dequantization) into model space y at t0 (0
    for uniform, deq.truncated_normal_t for truncated_normal) and the ELBO of the lambda = 0 plug-in reverse SDE
    on [t0, T] scores it: elbo.elbo with `options` (the mean of options.draws draws), one independent unit per
    example and pass. deq.importance_samples must be 1 (check_importance_samples). K = 1, uniform:
    -(ELBO(y) + log|dy/dz|) / (d ln 2) + log2 L.
    """
    deq = deq.resolved(exp.config.data.dequantization)
    check_importance_samples("elbo", deq.importance_samples)
    score = score or exp.score_fn
    kw = dataclasses.asdict(options)

    def log_density(params, rng, y, t0):
        return elbo_lib.elbo(score(params), exp.sde_of(params), y, rng, t_min=t0, **kw), ()

    bound = _bound_fn(exp, log_density, deq)
    return jax.jit(lambda params, x, rng: bound(params, x, rng)[0])  # shardings follow the arguments


def make_ode_fn(
    exp: Experiment,
    options: OdeOptions = OdeOptions(),
    deq: DequantizationOptions = DequantizationOptions(),
    score: Callable | None = None,
    prior_logp: Callable | None = None,
) -> Callable:
    """Jitted (params, x [B, ...] data, rng) -> (per-example -log p in exp.unit [B], NFE) by the probability-flow
    ODE (ode.ode_logp with `options`; "auto" trace resolved by ode.trace_estimator) from max(t0, exp.ode_t_min),
    t0 the dequantization's time; K = deq.importance_samples dequantization draws, each its own solve
    (unrolled); NFE, returned by each solve, is their largest, -1 if any ran out of steps. K > 1 needs the
    exact trace (check_importance_samples)."""
    deq = deq.resolved(exp.config.data.dequantization)
    options = dataclasses.replace(
        options, divergence=ode_lib.trace_estimator(options.divergence, exp.dim, deq.importance_samples)
    )
    check_importance_samples("ode", deq.importance_samples, options.divergence)
    score = score or exp.score_fn
    kw = dataclasses.asdict(options)

    def log_density(params, rng, y, t0):
        return ode_lib.ode_logp(
            score(params), exp.sde_of(params), y, rng, t_min=max(t0, exp.ode_t_min), prior_logp=prior_logp, **kw
        )

    bound = _bound_fn(exp, log_density, deq)

    def fn(params, x, rng):
        value, nfes = bound(params, x, rng)
        return value, jnp.where(jnp.any(nfes < 0), -1, jnp.max(nfes))

    return jax.jit(fn)


def make_sampler(
    exp: Experiment,
    num: int,
    lam: float = 0.0,
    steps: int = 1000,
    ode: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    score: Callable | None = None,
) -> Callable:
    """Jitted (params, rng) -> (samples [num, ...] in data space, NFE or -1), built once per run.

    ode=False: the lambda-family Euler-Maruyama sampler with `steps` steps (lam = 0 reverse SDE ... 1
    probability-flow ODE); ode=True: the probability-flow ODE by an adaptive solver (Tsit5, rtol/atol; lam
    and steps unused). Both stop at sampling.t_min, a reference time (sde.truncation_time: a fixed gamma).
    """
    score = score or exp.score_fn
    shape = (num,) + exp.info.shape
    t_min = exp.config.sampling.t_min

    def draw(params, rng):
        sde = exp.sde_of(params)
        if ode:
            y, nfe = sampling.sample_ode(score(params), sde, rng, shape, rtol=rtol, atol=atol, t_min=t_min)
        else:
            y = sampling.sample_lambda(score(params), sde, rng, shape, lam=lam, steps=steps, t_min=t_min)
            nfe = jnp.asarray(-1, jnp.int32)
        return exp.to_data_space(y), nfe

    return jax.jit(draw)
