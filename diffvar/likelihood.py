"""Likelihood of the plug-in reverse SDE: the continuous-time ELBO, the probability-flow ODE, bpd.

`score_fn(y, t) -> grad_y log p_t(y)` is any jittable function with y [B, ...] and t [B]; the
model's drift is a = g * score. All functions return per-example values in nats, shape [B].

ISM form (Huang et al. 2021, Theorem), with s ~ q(s) and Y_s ~ N(alpha x, sigma^2 I):
    ELBO = log p_prior(Y_T) - [ |a|^2 / 2 + div(g a - f) ](Y_s, s) / q(s)
DSM form (Stein's identity), used for s >= t_eps, the ISM integrand below it:
    integrand = g^2 |score + eps / sigma|^2 / 2 - g^2 d / (2 sigma^2) - div f
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffvar.errors import check_choice
from diffvar.sampling import probability_flow_drift, solve_adaptive
from diffvar.sde import TIME_SAMPLINGS, bcast, time_proposal

FORMS = ("ism", "dsm")
DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")


def check_x(x, name="x"):
    """Raises ValueError unless x is a floating-point array [B, ...] (B >= 1, at least one data dimension).

    Only shapes and dtypes are checked, so a call behaves the same under jit as outside it. Model-space
    data: dequantize integer levels first (to_model_space)."""
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(f"{name} must be an array [B, ...], got {type(x).__name__}")
    if len(shape) < 2 or shape[0] < 1:
        raise ValueError(f"{name} must have shape [B, ...] with B >= 1 and at least one data dimension, got "
                         f"shape {tuple(shape)}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array (model space; integer levels go through "
                         f"to_model_space first), got dtype {dtype}")


def per_example_sum(v):
    """Sum over all but the batch axis, [B]."""
    return jnp.sum(jnp.reshape(v, (v.shape[0], -1)), axis=1)


def draw_probe(rng, shape, kind="rademacher"):
    """Hutchinson probe v of `shape` with E[v v^T] = I: Rademacher (+-1) or standard normal entries."""
    check_choice("probe", kind, PROBES, error=ValueError)
    if kind == "rademacher":
        return jax.random.rademacher(rng, shape, dtype=jnp.float32)
    return jax.random.normal(rng, shape)


def value_and_divergence(fn, y, rng=None, divergence="hutchinson", probe_kind="rademacher", v=None):
    """(fn(y), div_y fn(y)) for a per-example map fn: [B, ...] -> [B, ...]; divergence [B].

    hutchinson: v . (J v) with one probe v (one JVP), drawn from `rng` or, if given, the fixed probe `v`
    (shape of y); exact: sum_i (J e_i)_i (d JVPs, small d only).
    """
    check_choice("divergence", divergence, DIVERGENCES, error=ValueError)
    out_shape = jax.eval_shape(fn, y).shape
    if out_shape != y.shape:
        raise ValueError(f"score_fn must return an array of the input's shape {y.shape}, got {out_shape}")
    if divergence == "hutchinson":
        if v is None:
            if rng is None:
                raise ValueError("divergence='hutchinson' needs rng or a fixed probe v, got neither")
            v = draw_probe(rng, y.shape, probe_kind)
        elif v.shape != y.shape:
            raise ValueError(f"v must have y's shape {y.shape}, got {v.shape}")
        out, jv = jax.jvp(fn, (y,), (v,))
        return out, per_example_sum(v * jv)
    d = math.prod(y.shape[1:])
    basis = jnp.reshape(jnp.eye(d, dtype=y.dtype), (d, 1) + y.shape[1:])
    out, jvp_fn = jax.linearize(fn, y)
    jes = jax.lax.map(lambda e: jvp_fn(jnp.broadcast_to(e, y.shape)), basis)  # [d, B, ...]
    diag = jnp.reshape(jes, (d, y.shape[0], d))[jnp.arange(d), :, jnp.arange(d)]  # [d, B]
    return out, jnp.sum(diag, axis=0)


def ism_integrand(score_fn, sde, y, t, rng=None, divergence="hutchinson", probe_kind="rademacher"):
    """|a|^2 / 2 + div(g a - f) at (y, t) with a = g score, [B]."""
    g2 = sde.g2(t)
    d = math.prod(y.shape[1:])
    score, div = value_and_divergence(lambda z: score_fn(z, t), y, rng, divergence, probe_kind)
    return 0.5 * g2 * per_example_sum(score**2) + g2 * div - sde.div_drift(t, d)


def score_residual(score_fn, sde, y, eps, t):
    """score(y, t) + eps / sigma(t) = score - grad_y log q_t(y | x), shape of y; eps is the noise that made y."""
    _, sigma = sde.alpha_sigma(t)
    return score_fn(y, t) + eps / bcast(sigma, eps)


def dsm_integrand(score_fn, sde, y, eps, t):
    """g^2 |score + eps / sigma|^2 / 2 - g^2 d / (2 sigma^2) - div f, [B]; eps is the noise that made y."""
    g2 = sde.g2(t)
    d = math.prod(y.shape[1:])
    resid = score_residual(score_fn, sde, y, eps, t)
    return 0.5 * g2 * per_example_sum(resid**2) - 0.5 * g2 * d / sde.sigma2(t) - sde.div_drift(t, d)


def _elbo_once(score_fn, sde, x, rng, form, divergence, probe_kind, q, t_eps):
    """One-sample ELBO estimate with times t ~ q, [B]."""
    b = x.shape[0]
    k_t, k_eps, k_T, k_div = jax.random.split(rng, 4)
    t = q.sample(k_t, b)
    y, eps = sde.perturb(k_eps, x, t)
    ism = lambda: ism_integrand(score_fn, sde, y, t, k_div, divergence, probe_kind)
    if form == "ism":
        integrand = ism()
    else:
        # Below t_eps the DSM integrand's variance blows up like 1/t^2; the ISM one has the same mean there.
        ts = jnp.maximum(t, t_eps)
        integrand = jnp.where(t < t_eps, ism(), dsm_integrand(score_fn, sde, y, eps, ts))
    y_T, _ = sde.perturb(k_T, x, jnp.full((b,), sde.T))
    return sde.prior_logp(y_T) - integrand / q.density(t)


def elbo(score_fn, sde, x, rng, num_samples=1, form="ism", divergence="hutchinson", probe="rademacher",
         time_sampling="uniform", t_eps=1e-3):
    """Continuous-time ELBO of the plug-in reverse SDE (lambda = 0) at x [B, ...] -> [B] nats.

    Unbiased Monte-Carlo estimate averaged over `num_samples` draws of (s, Y_s, Y_T, probe), unrolled.
    time_sampling: a proposal object with sample(rng, n) and density(t) on [0, T] (diffvar.sde's
    UniformTime, ImportanceTime), or its name in TIME_SAMPLINGS (ImportanceTime flat below t_eps).
    """
    check_choice("form", form, FORMS, error=ValueError)
    check_choice("divergence", divergence, DIVERGENCES, error=ValueError)
    check_choice("probe", probe, PROBES, error=ValueError)
    check_x(x)
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    q = time_sampling
    if isinstance(q, str):
        q = time_proposal(check_choice("time_sampling", q, TIME_SAMPLINGS, error=ValueError), sde, t_eps)
    keys = jax.random.split(rng, num_samples)
    # Unrolled: under jit on XLA:CPU (jaxlib 0.10.2), jax.vmap over one draw gave wrong values (see
    # tests/test_likelihood.py::test_elbo_under_jit_equals_elbo_run_op_by_op).
    draws = [_elbo_once(score_fn, sde, x, k, form, divergence, probe, q, t_eps) for k in keys]
    return sum(draws) / num_samples


def ode_logp(score_fn, sde, x, rng, rtol=1e-5, atol=1e-5, divergence="exact", probe="rademacher",
             t_min=0.0, max_steps=4096, prior_logp=None):
    """log p(x) [B] under the probability-flow ODE dy/ds = f - g^2 score / 2, and the number of evaluations.

    log p(x) = log p_prior(y_T) + int_{t_min}^T div(f - g^2 score / 2)(y_s, s) ds, solved by
    sampling.solve_adaptive (Tsit5, PID step-size control) for the whole batch at once. With
    divergence="hutchinson" one probe per example is drawn and held fixed along the path (FFJORD). NFE counts
    the drift evaluations of the solver (6 per attempted Tsit5 step plus the first, by FSAL); it is -1 when
    the solver needed more than max_steps steps (the log p values are then meaningless).
    `prior_logp(y_T) -> [B]` replaces the SDE's prior, e.g. by the exact p_T of a test mixture, which removes
    the (tiny) prior mismatch from the comparison.
    """
    check_choice("divergence", divergence, DIVERGENCES, error=ValueError)
    check_choice("probe", probe, PROBES, error=ValueError)
    check_x(x)
    b = x.shape[0]
    v = draw_probe(rng, x.shape, probe) if divergence == "hutchinson" else None

    def vector_field(s, state):
        t = jnp.full((b,), s)
        return value_and_divergence(lambda z: probability_flow_drift(score_fn, sde, z, t), state[0],
                                    divergence=divergence, v=v)

    (y_T, delta), nfe = solve_adaptive(vector_field, (x, jnp.zeros((b,), x.dtype)), t_min, sde.T, rtol, atol,
                                       max_steps, throw=False)
    return (sde.prior_logp if prior_logp is None else prior_logp)(y_T) + delta, nfe


# ----------------------------------------------------------------------------------------------
# Bits per dimension: dequantization, the optional logit transform, and the accounting.


def dequantize(rng, x, levels):
    """Uniform dequantization of integer levels x in {0..K-1}: z = (x + u) / K in [0, 1), u ~ U[0,1)^d."""
    return (x + jax.random.uniform(rng, x.shape)) / levels


def logit_transform(z, alpha=0.05):
    """y = logit(alpha + (1 - 2 alpha) z) and log|dy/dz| summed per example ([B])."""
    p = alpha + (1.0 - 2.0 * alpha) * z
    y = jnp.log(p) - jnp.log1p(-p)
    logdet = per_example_sum(math.log(1.0 - 2.0 * alpha) - jnp.log(p) - jnp.log1p(-p))
    return y, logdet


def logit_inverse(y, alpha=0.05):
    """z = (sigmoid(y) - alpha) / (1 - 2 alpha), the inverse of logit_transform (clipped to [0, 1])."""
    return jnp.clip((jax.nn.sigmoid(y) - alpha) / (1.0 - 2.0 * alpha), 0.0, 1.0)


TRANSFORMS = ("logit", "scale")


def to_model_space(rng, x, levels, transform="logit", alpha=0.05):
    """Data -> the space the diffusion runs in, and log|dy/dz| [B] for exact bpd.

    Discrete x (levels K): z = dequantize(x), then y = logit(alpha + (1 - 2 alpha) z) ("logit") or y = 2 z - 1
    ("scale", log|dy/dz| = d log 2). Continuous x (levels None): y = x, log|dy/dz| = 0.
    """
    if levels is None:
        return x, jnp.zeros(x.shape[:1], x.dtype)
    check_choice("transform", transform, TRANSFORMS, error=ValueError)
    z = dequantize(rng, x, levels)
    if transform == "logit":
        return logit_transform(z, alpha)
    return 2.0 * z - 1.0, jnp.full(x.shape[:1], math.prod(x.shape[1:]) * math.log(2.0), x.dtype)


def from_model_space(y, transform="logit", alpha=0.05):
    """The inverse of to_model_space's transform: y -> z in [0, 1] (images to look at)."""
    check_choice("transform", transform, TRANSFORMS, error=ValueError)
    if transform == "logit":
        return logit_inverse(y, alpha)
    return jnp.clip(0.5 * (y + 1.0), 0.0, 1.0)


def bpd(logp_y, logdet, d, levels):
    """-(log p(y) + log|dy/dz|) / (d ln 2) + log2 K: an upper bound on the discrete NLL in bits/dim, [B]."""
    return -(logp_y + logdet) / (d * math.log(2.0)) + math.log2(levels)

