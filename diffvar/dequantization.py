"""From discrete data to model space, and bits per dimension: the transform, the dequantizations, the bounds.

A monotone per-dimension transform h (TRANSFORMS) maps x's bin [x/L, (x+1)/L) to a box [lo, hi) in model
space. Every dequantization q(y | x) draws y inside (a scaled copy of) that box and bounds the discrete log P(x)
    log P(x) >= E_q[ log p_{t0}(y) - log q(y | x) ]                                  (Jensen)
    log P(x) >= E[ log mean_k exp(log p_{t0}(y_k) - log q(y_k | x)) ],  y_1..y_K iid ~ q   (importance-weighted)
and bpd = -bound / (d ln 2): no other constant, every one of them is inside log q (docs/likelihood.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffvar.divergence import check_x, per_example_sum
from diffvar.errors import check_choice
from diffvar.options import Options, option
from diffvar.sde import SDE, bcast

TRANSFORMS = ("logit", "scale")
# How training data are made continuous: uniform noise in the bin (z = (x + u) / K; its matched bound is uniform
# dequantization at t = 0) or none, the bin centres z = (x + 1/2) / K (the i-DODE way: the model's density at
# t_eps is a mixture of narrow kernels around the centres; its matched bound is the truncated normal at t_eps).
TRAINING_DEQUANTIZATIONS = ("uniform", "none")
MATCHED_DEQUANTIZATION = {"uniform": "uniform", "none": "truncated_normal"}
DEQUANTIZATIONS = ("uniform", "truncated_normal")


@dataclasses.dataclass(frozen=True)
class DequantizationOptions(Options):
    """How a bound on the discrete log P(x) is made (images): the eval config's keys (eval.<name>),
    scripts/evaluate.py's flags (--<name>) and the label of each estimate."""

    dequantization: str = option(
        "uniform",
        "Images: uniform (at t = 0) | truncated_normal (at "
        "truncated_normal_t, i-DODE's) | auto (matched to data.dequantization); "
        "docs/likelihood.md.",
        ("auto",) + DEQUANTIZATIONS,
    )
    importance_samples: int = option(
        1,
        "K dequantization samples of the importance-weighted bound (1: the plain "
        "bound; K > 1 only with the ODE's exact trace).",
        minimum=1,
        integer=True,
    )
    truncated_normal_t: float = option(
        1e-3,
        "Reference time of the truncated-normal dequantization (i-DODE's "
        "t_eps): y is Y at that time, scored by the model's density there.",
        minimum=0,
        strict=True,
    )

    def resolved(self, training_dequantization: str) -> DequantizationOptions:
        """These options with "auto" replaced by the bound matched to how the model was trained."""
        if self.dequantization != "auto":
            return self
        return dataclasses.replace(self, dequantization=MATCHED_DEQUANTIZATION[training_dequantization])

    @property
    def time(self) -> float:
        """t0, the reference time whose model density the dequantized y is scored under: 0 (uniform) or
        truncated_normal_t."""
        return 0.0 if self.dequantization == "uniform" else float(self.truncated_normal_t)


def forward_transform(z: jax.Array, transform: str = "logit", alpha: float = 0.05) -> tuple[jax.Array, jax.Array]:
    """(y = h(z), log|dy/dz| [B]) elementwise for z in [0, 1]: logit(alpha + (1 - 2 alpha) z) or 2 z - 1."""
    check_choice("transform", transform, TRANSFORMS, error=ValueError)
    if transform == "scale":
        return 2.0 * z - 1.0, jnp.full(z.shape[:1], math.prod(z.shape[1:]) * math.log(2.0), z.dtype)
    p = alpha + (1.0 - 2.0 * alpha) * z
    y = jnp.log(p) - jnp.log1p(-p)
    return y, per_example_sum(math.log(1.0 - 2.0 * alpha) - jnp.log(p) - jnp.log1p(-p))


def inverse_transform(y: jax.Array, transform: str = "logit", alpha: float = 0.05) -> jax.Array:
    """z = h^{-1}(y), clipped to [0, 1] (images to look at)."""
    check_choice("transform", transform, TRANSFORMS, error=ValueError)
    if transform == "logit":
        return jnp.clip((jax.nn.sigmoid(y) - alpha) / (1.0 - 2.0 * alpha), 0.0, 1.0)
    return jnp.clip(0.5 * (y + 1.0), 0.0, 1.0)


def to_model_space(
    rng: jax.Array,
    x: jax.Array,
    levels: int | None,
    transform: str = "logit",
    alpha: float = 0.05,
    dequantization: str = "uniform",
) -> tuple[jax.Array, jax.Array]:
    """Data -> the space the diffusion runs in: (y [B, ...], log|dy/dz| [B]).

    Discrete x (levels L): z = (x + u) / L, u ~ U[0,1)^d ("uniform") or the bin centre (x + 1/2) / L ("none";
    rng unused), then y = h(z) (forward_transform). Continuous x (levels None): y = x, log|dy/dz| = 0.
    """
    if levels is None:
        return x, jnp.zeros(x.shape[:1], x.dtype)
    check_choice("dequantization", dequantization, TRAINING_DEQUANTIZATIONS, error=ValueError)
    z = (x + jax.random.uniform(rng, x.shape)) / levels if dequantization == "uniform" else (x + 0.5) / levels
    return forward_transform(z, transform, alpha)


def bin_box(x: jax.Array, levels: int, transform: str = "logit", alpha: float = 0.05) -> tuple[jax.Array, jax.Array]:
    """(lo, hi, centre), each the shape of x: x's bin [x/L, (x+1)/L) in model space, [h(x/L), h((x+1)/L)), and
    the image of its centre h((x + 1/2)/L). x: integer levels in {0..L-1} as floats [B, ...]."""
    h = lambda z: forward_transform(z, transform, alpha)[0]
    return h(x / levels), h((x + 1.0) / levels), h((x + 0.5) / levels)


def normal_mass_log(a: jax.Array, b: jax.Array) -> jax.Array:
    """log(Phi(b) - Phi(a)) elementwise for a < b, stable in both tails (computed on the side a + b <= 0)."""
    flip = a + b > 0
    lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    log_hi, log_lo = jax.scipy.special.log_ndtr(hi), jax.scipy.special.log_ndtr(lo)
    return log_hi + jnp.log1p(-jnp.exp(jnp.minimum(log_lo - log_hi, -1e-7)))


def truncated_standard_normal(rng: jax.Array, a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(e, log density of e) elementwise: e ~ N(0, 1) truncated to [a, b], by the inverse CDF on the side
    a + b <= 0 (where Phi has its precision). log density = -e^2/2 - log(2 pi)/2 - log(Phi(b) - Phi(a))."""
    flip = a + b > 0
    lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    u = jax.random.uniform(rng, a.shape, a.dtype)
    c_lo, c_hi = jax.scipy.special.ndtr(lo), jax.scipy.special.ndtr(hi)
    e = jnp.clip(jax.scipy.special.ndtri(c_lo + u * (c_hi - c_lo)), lo, hi)
    e = jnp.where(flip, -e, e)
    return e, -0.5 * e**2 - 0.5 * math.log(2 * math.pi) - normal_mass_log(a, b)


def _truncated_normal(rng, x, levels, sde, t, transform, alpha):
    """(y, log q(y | x) [B]): y = alpha c + sigma e, e ~ N(0, I) truncated to [alpha (lo - c) / sigma,
    alpha (hi - c) / sigma] per dimension, alpha and sigma at sde.truncation_time(t); (lo, hi, c) = bin_box(x)."""
    lo, hi, c = bin_box(x, levels, transform, alpha)
    ts = jnp.full(x.shape[:1], sde.truncation_time(t), x.dtype)
    a_t, s_t = (bcast(v, x) for v in sde.alpha_sigma(ts))
    e, log_e = truncated_standard_normal(rng, a_t * (lo - c) / s_t, a_t * (hi - c) / s_t)
    return a_t * c + s_t * e, per_example_sum(log_e - jnp.log(s_t))


def dequantize(
    rng: jax.Array,
    x: jax.Array,
    levels: int,
    dequantization: str = "uniform",
    sde: SDE | None = None,
    t: float = 1e-3,
    transform: str = "logit",
    alpha: float = 0.05,
) -> tuple[jax.Array, jax.Array]:
    """(y, log q(y | x) [B]): a draw of the dequantization q (DEQUANTIZATIONS) of integer levels x [B, ...].

    uniform, at t0 = 0: y = h((x + u) / L), the draws of to_model_space with the same rng; q = L^d / |dy/dz| on
    the box, so log q = d log L - log|dy/dz|.
    truncated_normal, at t0 = t (i-DODE): the diffusion kernel N(alpha c, sigma^2 I) at sde.truncation_time(t)
    restricted to Y / alpha in x's box, c = h((x + 1/2)/L); per dimension
        log q = -e^2/2 - log(2 pi)/2 - log sigma - log(Phi(b) - Phi(a)).
    Its discrete model is P(x) = P_model(Y_t / alpha in x's box) (boxes are disjoint, so sum_x P(x) <= 1): y is
    scored by the model's density at t itself, with no Jacobian.
    """
    check_choice("dequantization", dequantization, DEQUANTIZATIONS, error=ValueError)
    check_x(x)
    if dequantization == "uniform":
        y, logdet = to_model_space(rng, x, levels, transform, alpha)
        return y, math.prod(x.shape[1:]) * math.log(levels) - logdet
    if sde is None:
        raise ValueError("dequantization='truncated_normal' needs sde (its kernel at t), got None")
    return _truncated_normal(rng, x, levels, sde, t, transform, alpha)


def importance_weighted_bound(
    log_density: Callable,
    rng: jax.Array,
    x: jax.Array,
    levels: int,
    dequantization: str = "uniform",
    importance_samples: int = 1,
    sde: SDE | None = None,
    t: float = 1e-3,
    transform: str = "logit",
    alpha: float = 0.05,
) -> tuple[jax.Array, object]:
    """(bound [B], aux): a lower bound on the discrete log P(x) in nats for x [B, ...] integer levels,

        bound = log (1/K) sum_k exp(log p(y_k) - log q(y_k | x)),   y_k ~ q iid,   K = importance_samples

    (unrolled), `log_density(rng, y) -> (log p_{t0}(y) [B], aux)` the model's (t0: 0 for uniform, t for
    truncated_normal), aux any per-call statistic, stacked over the K calls ([K, ...]). K = 1 is the plain bound
    E_q[log p - log q], linear in log p: an unbiased estimate of log p (an ELBO, or an ODE with a Hutchinson
    trace) keeps it a bound in expectation. For K > 1 log-mean-exp is convex: noise in log p pushes its
    expectation up, by an amount no estimate of the noise bounds without assuming its distribution, so
    log_density must then be exact (the ODE with the exact trace; experiment.check_importance_samples).
    """
    if not (isinstance(importance_samples, int) and importance_samples >= 1):
        raise ValueError(f"importance_samples must be an int >= 1, got {importance_samples!r}")
    log_w, aux = [], []
    for k in [rng] if importance_samples == 1 else jax.random.split(rng, importance_samples):
        k_q, k_p = jax.random.split(k)
        y, log_q = dequantize(k_q, x, levels, dequantization, sde, t, transform, alpha)
        log_p, a = log_density(k_p, y)
        log_w.append(log_p - log_q)
        aux.append(a)
    aux = jax.tree.map(lambda *a: jnp.stack(a), *aux)
    if importance_samples == 1:
        return log_w[0], aux
    return jax.nn.logsumexp(jnp.stack(log_w), axis=0) - math.log(importance_samples), aux


def bpd(bound: jax.Array, d: int) -> jax.Array:
    """-bound / (d ln 2): bits per dimension of a lower bound on the discrete log P(x) [B] (an upper bound on
    the discrete NLL). Every convention's constants (log2 L, log|dy/dz|, the truncated normal's mass) are
    already inside the bound's log q: with uniform dequantization bpd = -(log p(y) + log|dy/dz|) / (d ln 2)
    + log2 L."""
    return -bound / (d * math.log(2.0))
