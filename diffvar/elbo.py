"""The continuous-time ELBO of the plug-in reverse SDE (lambda = 0), in its ISM and DSM forms.

`score_fn(y, t) -> grad_y log p_t(y)` is any jittable function with y [B, ...] and t [B]; the model's drift is
a = g * score. Values are per example, in nats, [B].

ISM form (Huang et al. 2021, Theorem), with s ~ q(s) and Y_s ~ N(alpha x, sigma^2 I):
    ELBO = log p_prior(Y_T) - [ |a|^2 / 2 + div(g a - f) ](Y_s, s) / q(s)
DSM form (Stein's identity), used for s >= t_min + t_eps, the ISM integrand below it:
    integrand = g^2 |score + eps / sigma|^2 / 2 - g^2 d / (2 sigma^2) - div f
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffvar.divergence import DIVERGENCES, PROBES, check_x, per_example_sum, value_and_divergence
from diffvar.options import Options, option
from diffvar.sde import SDE, TIME_SAMPLINGS, bcast, time_proposal

FORMS = ("ism", "dsm")


@dataclasses.dataclass(frozen=True)
class ElboOptions(Options):
    """How elbo() estimates: the keyword arguments of elbo and elbo_draws, the eval config's keys (eval.<name>),
    scripts/evaluate.py's flags (--<name>) and the label of each ELBO estimate."""

    form: str = option("ism", "ELBO form: ism | dsm (the ISM integrand below t_min + t_eps).", FORMS)
    time_sampling: str = option(
        "uniform", "Time proposal: uniform | importance (q proportional to g^2 / sigma^2).", TIME_SAMPLINGS
    )
    divergence: str = option("hutchinson", "The ISM integrand's divergence: hutchinson | exact.", DIVERGENCES)
    probe: str = option("rademacher", "Hutchinson probe: rademacher | gaussian.", PROBES)
    probes: int = option(1, "Hutchinson probes per time point (one vmapped JVP).", minimum=1, integer=True)
    draws: int = option(
        1, "ELBO draws (time, noise, probe) averaged into one unit per example and pass.", minimum=1, integer=True
    )
    stratified: bool = option(
        False,
        "Stratify the draws' times: draw j in the j-th of `draws` strata of equal q-mass (their mean is one unit).",
    )
    t_eps: float = option(
        1e-3,
        "Reference time of the DSM form's switch to the ISM integrand (above t_min) and "
        "of the importance proposal's flat part below it.",
        minimum=0,
        strict=True,
    )


def ism_integrand(
    score_fn: Callable,
    sde: SDE,
    y: jax.Array,
    t: jax.Array,
    rng: jax.Array | None = None,
    divergence: str = "hutchinson",
    probe_kind: str = "rademacher",
    probes: int = 1,
) -> jax.Array:
    """|a|^2 / 2 + div(g a - f) at (y, t) with a = g score, [B]; the divergence by `probes` Hutchinson probes."""
    g2 = sde.g2(t)
    d = math.prod(y.shape[1:])
    score, div = value_and_divergence(lambda z: score_fn(z, t), y, rng, divergence, probe_kind, probes=probes)
    return 0.5 * g2 * per_example_sum(score**2) + g2 * div - sde.div_drift(t, d)


def score_residual(score_fn: Callable, sde: SDE, y: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """score(y, t) + eps / sigma(t) = score - grad_y log q_t(y | x), shape of y; eps is the noise that made y."""
    _, sigma = sde.alpha_sigma(t)
    return score_fn(y, t) + eps / bcast(sigma, eps)


def dsm_integrand(
    score_fn: Callable, sde: SDE, y: jax.Array, eps: jax.Array, t: jax.Array, sigma: jax.Array | None = None
) -> jax.Array:
    """g^2 |score + eps / sigma|^2 / 2 - g^2 d / (2 sigma^2) - div f, [B]; eps is the noise that made y.

    sigma [B]: the std of the kernel that made y = mean + sigma eps; default sigma(t), the kernel from s = 0
    (from a later start t0 it is the conditional std, see perturb_from)."""
    g2 = sde.g2(t)
    d = math.prod(y.shape[1:])
    if sigma is None:
        resid = score_residual(score_fn, sde, y, eps, t)
        sigma2 = sde.sigma2(t)
    else:
        resid = score_fn(y, t) + eps / bcast(sigma, eps)
        sigma2 = sigma**2
    return 0.5 * g2 * per_example_sum(resid**2) - 0.5 * g2 * d / sigma2 - sde.div_drift(t, d)


def perturb_from(
    sde: SDE, rng: jax.Array, y0: jax.Array, t0: float | jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(y, eps, s): a draw y = a y0 + s eps of Y_t | Y_{t0} = y0, eps ~ N(0, I) (shape of y0), s [B].

    a = alpha(t) / alpha(t0), s^2 = sigma(t)^2 - a^2 sigma(t0)^2 (the linear SDE's transition from t0 to t);
    t0 = 0 is sde.perturb itself (same draws). t [B] >= t0, a float or a scalar array."""
    if isinstance(t0, (int, float)) and t0 == 0.0:
        y, eps = sde.perturb(rng, y0, t)
        return y, eps, sde.alpha_sigma(t)[1]
    t0s = jnp.full_like(t, t0)
    log_a = sde.log_alpha(t) - sde.log_alpha(t0s)
    s = jnp.sqrt(jnp.maximum(sde.sigma2(t) - jnp.exp(2.0 * log_a) * sde.sigma2(t0s), 1e-12))
    eps = jax.random.normal(rng, y0.shape, y0.dtype)
    return bcast(jnp.exp(log_a), y0) * y0 + bcast(s, y0) * eps, eps, s


@dataclasses.dataclass(frozen=True)
class StratifiedTime:
    """q restricted, row by row, to strata of equal q-mass: row i's t = q.quantile((stratum[i] + U) /
    num_strata), U ~ U[0,1). density is q's: a draw from stratum j (density num_strata q there) weighted by 1/q
    has mean num_strata int_{S_j} f, so the mean over one draw per stratum is unbiased, with at most the variance
    of iid draws, but its draws are not independent: only their mean is one unit. stratum: ints [n]."""

    q: object
    stratum: jax.Array
    num_strata: int

    def sample(self, rng: jax.Array, n: int) -> jax.Array:
        return self.q.quantile((self.stratum + jax.random.uniform(rng, (n,))) / self.num_strata)

    def density(self, t: jax.Array) -> jax.Array:
        return self.q.density(t)


def _elbo_once(score_fn, sde, x, rng, form, divergence, probe_kind, q, t_eps, t_min, probes=1):
    """One-sample ELBO estimate of log p_{t0}(x) with times t ~ q on [t0, T], [B]; t0 and the DSM/ISM switch
    are the truncation times (sde.truncation_time) of the reference times t_min and t_min + t_eps."""
    b = x.shape[0]
    k_t, k_eps, k_T, k_div = jax.random.split(rng, 4)
    t = q.sample(k_t, b)
    t0 = sde.truncation_time(t_min)
    y, eps, sigma = perturb_from(sde, k_eps, x, t0, t)
    ism = lambda: ism_integrand(score_fn, sde, y, t, k_div, divergence, probe_kind, probes)
    if form == "ism":
        integrand = ism()
    else:
        # Below t_min + t_eps the DSM integrand's variance blows up like 1/(t - t_min)^2; the ISM one has the
        # same mean there.
        t_dsm = sde.truncation_time(t_min + t_eps)
        ts = jnp.maximum(t, t_dsm)
        s_dsm = sigma if t_min == 0.0 else jnp.maximum(sigma, perturb_from(sde, k_eps, x, t0, ts)[2])
        integrand = jnp.where(
            t < t_dsm, ism(), dsm_integrand(score_fn, sde, y, eps, ts, None if t_min == 0.0 else s_dsm)
        )
    y_T, _, _ = perturb_from(sde, k_T, x, t0, jnp.full((b,), sde.T))
    return sde.prior_logp(y_T) - integrand / q.density(t)


def elbo_draws(score_fn: Callable, sde: SDE, x: jax.Array, rng: jax.Array, t_min: float = 0.0, **options) -> jax.Array:
    """`draws` ELBO draws at x [B, ...] -> [draws, B] nats; options: ElboOptions' fields.

    Each draw is an unbiased estimate of a lower bound on log p_{t0}(x), the model's density of Y at
    t0 = sde.truncation_time(t_min) (t_min for a fixed schedule; t_min = 0: of the data):
        E[ log p_prior(Y_T) - int_{t0}^T (|a|^2 / 2 + div(g a - f))(Y_s, s) ds ],  Y_{t0} = x,
    Y_s | x from the SDE's transition kernel (perturb_from), s ~ q = sde.time_proposal(time_sampling, sde, t_eps,
    t_min). stratified: draw j's time lies in the j-th of `draws` strata of equal q-mass (StratifiedTime), so
    the draws of one example are not independent and only their mean is one unit. The draws run as one batch
    of draws * B rows (x tiled; no loop and no vmap), so memory grows draws-fold.
    """
    o = ElboOptions(**options)
    check_x(x)
    if not (isinstance(t_min, (int, float)) and 0.0 <= t_min < sde.T):
        raise ValueError(f"t_min must be a number in [0, T={sde.T}), got {t_min!r}")
    b, n = x.shape[0], o.draws
    q = time_proposal(o.time_sampling, sde, o.t_eps, float(t_min))
    if o.stratified and n > 1:
        q = StratifiedTime(q, jnp.repeat(jnp.arange(n), b), n)
    tiled = jnp.tile(x, (n,) + (1,) * (x.ndim - 1))
    values = _elbo_once(
        score_fn,
        sde,
        tiled,
        jax.random.split(rng, 1)[0],
        o.form,
        o.divergence,
        o.probe,
        q,
        o.t_eps,
        float(t_min),
        o.probes,
    )
    return jnp.reshape(values, (n, b))


def elbo(score_fn: Callable, sde: SDE, x: jax.Array, rng: jax.Array, t_min: float = 0.0, **options) -> jax.Array:
    """The ELBO of the plug-in reverse SDE at x [B, ...] -> [B] nats: the mean of elbo_draws (options:
    ElboOptions' fields, e.g. draws=4, form="dsm", time_sampling="importance")."""
    return jnp.mean(elbo_draws(score_fn, sde, x, rng, t_min, **options), axis=0)
