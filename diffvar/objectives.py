"""Training losses: pure functions of (score_fn, x, rng), selectable by name.

    loss_fn = get_objective(config.objective.name, sde, t_eps=1e-3, probe="rademacher")
    loss = loss_fn(score_fn, x, rng)             # [B]; the trainer minimises its mean

`score_fn(y, t) -> grad_y log p_t(y)` with y [B, ...], t [B]; x [B, ...]; every loss is per example, [B],
summed (not averaged) over the data dimensions. With Y_t = alpha(t) x + sigma(t) eps, eps ~ N(0, I):

    dsm     t ~ U[t_lo, T]:               |sigma score + eps|^2 / 2                  (DDPM's eps-loss)
    dsm_is  t ~ q(t) oc g^2/sigma^2 on [t_lo, T]:   dsm_integrand / q(t)             (sdeflow-light "debias")
    dsm_lw  t ~ U[t_lo, T]:               (T - t_lo) g^2 |score + eps/sigma|^2 / 2   (likelihood weighting)
    elbo    t ~ U[0, T]:                  -ELBO, ISM form, one Hutchinson probe
    ssm     t ~ U[t_lo, T]:               sigma^2 (|score|^2 / 2 + v^T J_score v)    (sliced SM, variance-reduced)

t_lo = sde.truncation_time(t_eps): t_eps itself for a fixed schedule; for a learned one the time at which it
has the reference VP's gamma(t_eps), so every loss is truncated at a fixed gamma_min and, in gamma, dsm_is and
dsm_lw train int_{gamma_min}^{gamma(T)} E |sigma score + eps|^2 / 2 dgamma (up to constants), whatever the
schedule's interior (for a score that is a function of y and gamma). dsm and ssm weight gamma by the time
density, which the interior moves: they are not for learned schedules (config.validate refuses them).

Which bound is trained. dsm_is is an unbiased one-sample estimate of -ELBO restricted to [t_eps, T] without the
prior term, i.e. E[dsm_is] = int_{t_eps}^T E[ism_integrand] dt; dsm_lw has the same theta-gradient in
expectation (its value differs by a theta-free constant) with more variance. The piece on [0, t_eps] is left out
because its DSM estimator has infinite variance (the integrand's variance grows like 1/t^2), so the bound these
two losses train is the one on [t_eps, T]; evaluation (elbo.elbo) still reports the full ELBO on [0, T].
`elbo` trains the full bound through the ISM form (finite variance down to t = 0, one JVP per step).
dsm and ssm are differently weighted (weight sigma^2 instead of g^2): they do not train the ELBO.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax

from diffvar.divergence import PROBES, check_x, per_example_sum, value_and_divergence
from diffvar.elbo import dsm_integrand, elbo, score_residual
from diffvar.errors import check_choice
from diffvar.sde import SDE, ImportanceTime, UniformTime, bcast

OBJECTIVES = ("dsm", "dsm_is", "dsm_lw", "elbo", "ssm")
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]  # score_fn(y [B, ...], t [B]) -> [B, ...]
Loss = Callable[[ScoreFn, jax.Array, jax.Array], jax.Array]  # loss(score_fn, x [B, ...], rng) -> [B]


# ----------------------------------------------------------------------------------------------
# The losses. Each: (score_fn, sde, x [B, ...], rng, ...) -> [B]; Y_t is sde.perturb(rng, x, t).


def dsm_loss(score_fn: ScoreFn, sde: SDE, x: jax.Array, rng: jax.Array, t_eps: float = 1e-3) -> jax.Array:
    """|sigma score(y, t) + eps|^2 / 2, t ~ U[t_lo, T]: the eps-loss (score weighted by sigma^2), [B]."""
    k_t, k_eps = jax.random.split(rng)
    t = UniformTime(T=sde.T, t_min=sde.truncation_time(t_eps)).sample(k_t, x.shape[0])
    y, eps = sde.perturb(k_eps, x, t)
    _, sigma = sde.alpha_sigma(t)
    return 0.5 * per_example_sum((bcast(sigma, x) * score_fn(y, t) + eps) ** 2)


def dsm_is_loss(score_fn: ScoreFn, sde: SDE, x: jax.Array, rng: jax.Array, t_eps: float = 1e-3) -> jax.Array:
    """dsm_integrand / q(t) = Z (|sigma score + eps|^2 - d) / 2 - Z sigma^2 div f / g^2, t ~ q oc g^2/sigma^2, [B].

    E[loss] = int_{t_lo}^T E[ism_integrand] dt = -(ELBO on [t_lo, T]) + E[log p_prior(Y_T)] (theta-free).
    """
    k_t, k_eps = jax.random.split(rng)
    q = ImportanceTime(sde=sde, t_eps=t_eps, truncated=True)
    t = q.sample(k_t, x.shape[0])
    y, eps = sde.perturb(k_eps, x, t)
    return dsm_integrand(score_fn, sde, y, eps, t) / q.density(t)


def dsm_lw_loss(score_fn: ScoreFn, sde: SDE, x: jax.Array, rng: jax.Array, t_eps: float = 1e-3) -> jax.Array:
    """(T - t_lo) g^2 |score + eps / sigma|^2 / 2, t ~ U[t_lo, T]: likelihood-weighted DSM, [B].

    E[loss] = E[dsm_is] + (d / 2) (gamma(T) - gamma(t_lo)) + d (log alpha(T) - log alpha(t_lo)).
    """
    k_t, k_eps = jax.random.split(rng)
    t_lo = sde.truncation_time(t_eps)
    t = UniformTime(T=sde.T, t_min=t_lo).sample(k_t, x.shape[0])
    y, eps = sde.perturb(k_eps, x, t)
    resid = score_residual(score_fn, sde, y, eps, t)
    return (sde.T - t_lo) * 0.5 * sde.g2(t) * per_example_sum(resid**2)


def elbo_loss(score_fn: ScoreFn, sde: SDE, x: jax.Array, rng: jax.Array, probe: str = "rademacher") -> jax.Array:
    """-ELBO = -log p_prior(Y_T) + T (|g score|^2 / 2 + div(g^2 score - f)), t ~ U[0, T], one probe, [B]."""
    return -elbo(
        score_fn, sde, x, rng, draws=1, form="ism", divergence="hutchinson", probe=probe, time_sampling="uniform"
    )


def ssm_loss(
    score_fn: ScoreFn, sde: SDE, x: jax.Array, rng: jax.Array, t_eps: float = 1e-3, probe: str = "rademacher"
) -> jax.Array:
    """sigma^2 (|score|^2 / 2 + v^T J_score v), t ~ U[t_lo, T], y ~ N(alpha x, sigma^2 I), one probe v, [B]."""
    k_t, k_eps, k_v = jax.random.split(rng, 3)
    t = UniformTime(T=sde.T, t_min=sde.truncation_time(t_eps)).sample(k_t, x.shape[0])
    y, _ = sde.perturb(k_eps, x, t)
    score, div = value_and_divergence(lambda z: score_fn(z, t), y, k_v, "hutchinson", probe)
    return sde.sigma2(t) * (0.5 * per_example_sum(score**2) + div)


def get_objective(name: str, sde: SDE, t_eps: float = 1e-3, probe: str = "rademacher") -> Loss:
    """The loss called `name` (one of OBJECTIVES) for `sde`: loss(score_fn, x [B, ...], rng) -> [B]."""
    check_choice("name", name, OBJECTIVES, error=ValueError)
    check_choice("probe", probe, PROBES, error=ValueError)
    if not (isinstance(t_eps, (int, float)) and math.isfinite(t_eps) and 0.0 < t_eps < sde.T):
        raise ValueError(f"t_eps must be in (0, T={sde.T}), got {t_eps!r}")
    fns = {
        "dsm": functools.partial(dsm_loss, t_eps=t_eps),
        "dsm_is": functools.partial(dsm_is_loss, t_eps=t_eps),
        "dsm_lw": functools.partial(dsm_lw_loss, t_eps=t_eps),
        "elbo": functools.partial(elbo_loss, probe=probe),
        "ssm": functools.partial(ssm_loss, t_eps=t_eps, probe=probe),
    }
    fn = fns[name]

    def loss(score_fn: ScoreFn, x: jax.Array, rng: jax.Array) -> jax.Array:
        check_x(x)
        return fn(score_fn, sde, x, rng)

    loss.__name__ = f"{name}_loss"
    loss.__doc__ = fn.func.__doc__
    return loss
