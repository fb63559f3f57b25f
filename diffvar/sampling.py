"""Samplers of the plug-in reverse SDE family.

`score_fn(y, t) -> grad_y log p_t(y)` is any jittable function with y [B, ...] and t [B]; the model's
drift is a = g * score. In reversed time t' = T - s, starting from the prior at s = T,

    dX = [ (1 - lam/2) g(s)^2 score(X, s) - f(X, s) ] dt' + sqrt(1 - lam) g(s) dW,

lam = 0 is the reverse SDE of Song et al., lam = 1 the probability-flow ODE. Every lam in [0, 1] has the
same marginals when the score is exact; the samplers stop at s = t_min > 0 (default 1e-3), where the
score of real data is still well defined, so they sample q_{t_min}, not q_0.

All functions are pure and jittable (`score_fn`, `sde`, `shape`, `lam`, `steps` and the tolerances are
static: close over them or mark them static in `jax.jit`). The drift and `solve_adaptive` are shared with
diffvar.ode.ode_logp.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp

from diffvar.errors import check_number
from diffvar.sde import SDE, bcast


def _check_static(lam=0.0, steps=1, t_min=0.0, T=1.0, rtol=1.0, atol=1.0):
    """Raises ValueError naming the argument unless lam in [0, 1], steps an int >= 1, 0 <= t_min < T and the
    tolerances > 0: plain Python numbers (static under jit: close over them)."""
    check_number("lam", lam, 0.0, 1.0, error=ValueError)
    check_number("steps", steps, 1, integer=True, error=ValueError)
    check_number("t_min", t_min, 0.0, error=ValueError)
    if t_min >= T:
        raise ValueError(f"t_min={t_min!r} must be < T={T}")
    check_number("rtol", rtol, 0.0, strict=True, error=ValueError)
    check_number("atol", atol, 0.0, strict=True, error=ValueError)


def _check_shape(shape):
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be [B, ...] with at least one data dimension and positive sizes, got {shape}")
    return shape


# ----------------------------------------------------------------------------------------------
# The family's drift and the adaptive ODE solve (shared with diffvar.ode.ode_logp).


def lambda_drift(score_fn: Callable, sde: SDE, y: jax.Array, t: jax.Array, lam: float) -> jax.Array:
    """f(y, t) - (1 - lam/2) g(t)^2 score(y, t): the lam-family's drift dy/ds in forward time s, shape of y.

    The samplers move along its negative in reversed time t' = T - s; y [B, ...], t [B].
    """
    return sde.drift(y, t) - bcast((1.0 - 0.5 * lam) * sde.g2(t), y) * score_fn(y, t)


def probability_flow_drift(score_fn: Callable, sde: SDE, y: jax.Array, t: jax.Array) -> jax.Array:
    """dy/ds = f(y, t) - g(t)^2 score(y, t) / 2 (lam = 1), the probability-flow ODE, shape of y."""
    return lambda_drift(score_fn, sde, y, t, 1.0)


def solve_adaptive(
    vector_field: Callable,
    y0: jax.Array,
    t0: float | jax.Array,
    t1: float | jax.Array,
    rtol: float,
    atol: float,
    max_steps: int = 4096,
    throw: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Solves dy/ds = vector_field(s, y) from s = t0 to t1 (either direction), y any pytree of arrays.

    Tsit5 with a PID step-size controller (diffrax), the whole pytree as one system (one error norm over all
    of it). Returns (y(t1), nfe): nfe counts the vector-field evaluations, 6 per attempted step plus the
    first (FSAL), an int32 scalar array. After `max_steps` steps it raises (inside the solve), or with
    throw=False returns nfe = -1 (no host callback in the program: nothing to partition over devices).
    """
    _check_static(rtol=rtol, atol=atol)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda s, y, args: vector_field(s, y)),
        diffrax.Tsit5(),
        t0=t0,
        t1=t1,
        dt0=None,
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
        throw=throw,
    )
    nfe = jnp.where(sol.result == diffrax.RESULTS.successful, 6 * sol.stats["num_steps"] + 1, -1)
    return jax.tree_util.tree_map(lambda a: a[0], sol.ys), nfe


# ----------------------------------------------------------------------------------------------
# The samplers.


def sample_lambda(
    score_fn: Callable,
    sde: SDE,
    rng: jax.Array,
    shape: tuple[int, ...],
    lam: float = 0.0,
    steps: int = 1000,
    t_min: float = 1e-3,
) -> jax.Array:
    """Samples [shape] from the lam-family plug-in reverse SDE by Euler-Maruyama.

    Uniform grid s_i = T - i (T - t_min) / steps, i = 0..steps, starting from x ~ prior at s_0 = T. Step i:

        mean = x + [ (1 - lam/2) g^2 score(x, s_i) - f(x, s_i) ] dt
        x    = mean + sqrt(1 - lam) g(s_i) sqrt(dt) z,      z ~ N(0, I)

    The last step returns `mean` without its noise (score_sde's "denoise" convention: the noise it would add
    at s = t_min is of size g sqrt(dt), far below data resolution, and only blurs the samples). With lam = 1
    no noise is ever added and this is the Euler method for the probability-flow ODE.

    Args:
      score_fn: score_fn(y [B, ...], t [B]) -> [B, ...].
      sde: a forward SDE from diffvar.sde (drift, g2, prior_sample, T).
      rng: PRNG key.
      shape: output shape [B, ...] (B the number of samples).
      lam: float in [0, 1], the family's parameter.
      steps: int >= 1, the number of Euler-Maruyama steps (score evaluations).
      t_min: final time in [0, T), a reference time: the samplers stop at sde.truncation_time(t_min) (t_min
        for a fixed schedule, the time of the reference's gamma(t_min) for a learned one).

    Returns:
      x, shape `shape`.
    """
    _check_static(lam=lam, steps=steps, t_min=t_min, T=sde.T)
    shape = _check_shape(shape)
    b = shape[0]
    k_prior, k_steps = jax.random.split(rng)
    x = sde.prior_sample(k_prior, shape)
    dt = (sde.T - sde.truncation_time(t_min)) / steps
    noise_coef = jnp.sqrt(jnp.maximum(1.0 - lam, 0.0) * dt)

    def step(carry, i):
        x, _ = carry
        t = jnp.full((b,), sde.T - i * dt, x.dtype)
        mean = x - lambda_drift(score_fn, sde, x, t, lam) * dt
        z = jax.random.normal(jax.random.fold_in(k_steps, i), shape, x.dtype)
        return (mean + bcast(noise_coef * sde.diffusion(t), x) * z, mean), None

    (_, mean), _ = jax.lax.scan(step, (x, x), jnp.arange(steps))
    return mean


def sample_ode(
    score_fn: Callable,
    sde: SDE,
    rng: jax.Array,
    shape: tuple[int, ...],
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float = 1e-3,
    max_steps: int = 4096,
) -> tuple[jax.Array, jax.Array]:
    """Samples [shape] by solving the probability-flow ODE dy/ds = f - g^2 score / 2 from s = T down to t_min.

    Starts from y ~ prior at s = T (the same draw as `sample_lambda` makes with the same `rng`, so the two are
    comparable path by path: `sample_lambda(lam=1)` is the Euler method for this ODE) and integrates backwards
    in s by `solve_adaptive`, the whole batch as one system (one error norm over all of it, as in `ode_logp`).

    Returns:
      (x [shape], nfe): nfe counts the drift evaluations of the solver (6 per attempted Tsit5 step plus the
      first, by FSAL), as in `diffvar.ode.ode_logp`; an int32 scalar array.
    """
    _check_static(t_min=t_min, T=sde.T)
    shape = _check_shape(shape)
    b = shape[0]

    def vector_field(s, y):
        return probability_flow_drift(score_fn, sde, y, jnp.full((b,), s, y.dtype))

    k_prior, _ = jax.random.split(rng)  # the same prior draw as sample_lambda with this rng
    return solve_adaptive(
        vector_field, sde.prior_sample(k_prior, shape), sde.T, sde.truncation_time(t_min), rtol, atol, max_steps
    )
