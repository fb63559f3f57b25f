"""Likelihood of the plug-in reverse SDE: the continuous-time ELBO, the probability-flow ODE, bpd.

`score_fn(y, t) -> grad_y log p_t(y)` is any jittable function with y [B, ...] and t [B]; the
model's drift is a = g * score. All functions return per-example values in nats, shape [B].

ISM form (Huang et al. 2021, Theorem), with s ~ q(s) and Y_s ~ N(alpha x, sigma^2 I):
    ELBO = log p_prior(Y_T) - [ |a|^2 / 2 + div(g a - f) ](Y_s, s) / q(s)
DSM form (Stein's identity), used for s >= t_eps, the ISM integrand below it:
    integrand = g^2 |score + eps / sigma|^2 / 2 - g^2 d / (2 sigma^2) - div f
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from diffvar.errors import check_choice
from diffvar.sampling import probability_flow_drift, solve_adaptive
from diffvar.sde import TIME_SAMPLINGS, ImportanceTime, UniformTime, bcast, time_proposal

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


def value_and_divergence(fn, y, rng=None, divergence="hutchinson", probe_kind="rademacher", v=None, probes=1):
    """(fn(y), div_y fn(y)) for a per-example map fn: [B, ...] -> [B, ...]; divergence [B].

    hutchinson: v . (J v) with one probe v (one JVP), drawn from `rng` or, if given, the fixed probe `v`
    (shape of y); probes = P > 1: the mean of v_p . (J v_p) over P probes drawn from `rng`, one linearisation
    and one vmapped JVP over the probes (fn runs once). exact: sum_i (J e_i)_i (d JVPs, small d only).
    """
    check_choice("divergence", divergence, DIVERGENCES, error=ValueError)
    out_shape = jax.eval_shape(fn, y).shape
    if out_shape != y.shape:
        raise ValueError(f"score_fn must return an array of the input's shape {y.shape}, got {out_shape}")
    if divergence == "hutchinson" and probes > 1:
        if rng is None:
            raise ValueError(f"probes={probes} needs rng, got None")
        vs = draw_probe(rng, (probes,) + y.shape, probe_kind)  # [P, B, ...]
        out, jvp_fn = jax.linearize(fn, y)
        jvs = jax.vmap(jvp_fn)(vs)
        return out, jnp.mean(jax.vmap(per_example_sum)(vs * jvs), axis=0)
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


def ism_integrand(score_fn, sde, y, t, rng=None, divergence="hutchinson", probe_kind="rademacher", probes=1):
    """|a|^2 / 2 + div(g a - f) at (y, t) with a = g score, [B]; the divergence by `probes` Hutchinson probes."""
    g2 = sde.g2(t)
    d = math.prod(y.shape[1:])
    score, div = value_and_divergence(lambda z: score_fn(z, t), y, rng, divergence, probe_kind, probes=probes)
    return 0.5 * g2 * per_example_sum(score**2) + g2 * div - sde.div_drift(t, d)


def score_residual(score_fn, sde, y, eps, t):
    """score(y, t) + eps / sigma(t) = score - grad_y log q_t(y | x), shape of y; eps is the noise that made y."""
    _, sigma = sde.alpha_sigma(t)
    return score_fn(y, t) + eps / bcast(sigma, eps)


def dsm_integrand(score_fn, sde, y, eps, t, sigma=None):
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


def perturb_from(sde, rng, y0, t0, t):
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

    def sample(self, rng, n):
        return self.q.quantile((self.stratum + jax.random.uniform(rng, (n,))) / self.num_strata)

    def density(self, t):
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
        integrand = jnp.where(t < t_dsm, ism(), dsm_integrand(score_fn, sde, y, eps, ts,
                                                              None if t_min == 0.0 else s_dsm))
    y_T, _, _ = perturb_from(sde, k_T, x, t0, jnp.full((b,), sde.T))
    return sde.prior_logp(y_T) - integrand / q.density(t)


def time_proposal_on(name, sde, t_eps, t_min):
    """The proposal `name` on [0, T] (t_min = 0) or on [t0, T], t0 = sde.truncation_time(t_min) (uniform;
    importance: q ∝ g^2 / sigma^2); a proposal object is returned as it is."""
    if not isinstance(name, str):
        return name
    name = check_choice("time_sampling", name, TIME_SAMPLINGS, error=ValueError)
    if t_min == 0.0:
        return time_proposal(name, sde, t_eps)
    if name == "uniform":
        return UniformTime(T=sde.T, t_min=sde.truncation_time(t_min))
    return ImportanceTime(sde=sde, t_eps=t_min, truncated=True)


def check_draws(num_samples, probes):
    """Raises ValueError unless num_samples and probes are ints >= 1."""
    for name, value in (("num_samples", num_samples), ("probes", probes)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def elbo(score_fn, sde, x, rng, num_samples=1, form="ism", divergence="hutchinson", probe="rademacher",
         time_sampling="uniform", t_eps=1e-3, t_min=0.0, stratified=False, probes=1):
    """Continuous-time ELBO of the plug-in reverse SDE (lambda = 0) at x [B, ...] -> [B] nats.

    A lower bound on log p_{t0}(x), the model's density of Y at t0 = sde.truncation_time(t_min) (t_min for a
    fixed schedule; t_min = 0: of the data; t_min and t_eps are reference times, fixed gammas):
        E[ log p_prior(Y_T) - int_{t0}^T (|a|^2 / 2 + div(g a - f))(Y_s, s) ds ],  Y_{t0} = x,
    Y_s | x from the SDE's transition kernel (perturb_from). Unbiased Monte-Carlo estimate averaged over
    `num_samples` draws of (s, Y_s, Y_T, probe), one lax.map step each; stratified: draw j's time lies in the
    j-th of num_samples strata of equal q-mass (StratifiedTime), so the draws of one example are not independent
    and only their mean is one unit. probes: Hutchinson probes per time point (one vmapped JVP). time_sampling:
    a proposal object with sample(rng, n) and density(t) on [t_min, T] (diffvar.sde's UniformTime,
    ImportanceTime), or its name in TIME_SAMPLINGS (on [0, T]: ImportanceTime flat below t_eps; on [t_min, T]:
    q ∝ g^2 / sigma^2 there). The DSM form uses the ISM integrand on [t_min, t_min + t_eps).
    """
    check_choice("form", form, FORMS, error=ValueError)
    check_choice("divergence", divergence, DIVERGENCES, error=ValueError)
    check_choice("probe", probe, PROBES, error=ValueError)
    check_x(x)
    check_draws(num_samples, probes)
    if not (isinstance(t_min, (int, float)) and 0.0 <= t_min < sde.T):
        raise ValueError(f"t_min must be a number in [0, T={sde.T}), got {t_min!r}")
    q = time_proposal_on(time_sampling, sde, t_eps, float(t_min))
    keys = jax.random.split(rng, num_samples)
    strata = lambda j: StratifiedTime(q, jnp.full(x.shape[:1], j), num_samples) if stratified else q
    one = lambda k, j: _elbo_once(score_fn, sde, x, k, form, divergence, probe, strata(j), t_eps, float(t_min),
                                  probes)
    # One draw is the draw itself, not a loop of one (XLA:CPU runs convolution gradients inside any loop on
    # a naive kernel); several are a lax.map, not a vmap: under jit on XLA:CPU (jaxlib 0.10.2) a vmap over
    # one draw gave wrong values (tests/test_likelihood.py::test_elbo_under_jit_equals_elbo_run_op_by_op).
    if num_samples == 1:
        return one(keys[0], 0)
    return jnp.mean(jax.lax.map(lambda kj: one(*kj), (keys, jnp.arange(num_samples))), axis=0)


def elbo_mean_and_variance(score_fn, sde, x, rng, num_draws, stratified=False, time_sampling="uniform", t_eps=1e-3,
                           t_min=0.0, **kwargs):
    """(mean [B], variance of that mean [B]) of `num_draws` ELBO draws at x [B, ...].

    The draws run as one batch of num_draws * B (x tiled; no vmap), so memory grows num_draws-fold; the
    variance is the draws' sample variance / num_draws (0 for num_draws = 1, which cannot estimate it).
    stratified: draw j's time in stratum j of num_draws (StratifiedTime); the mean stays unbiased, and the
    variance returned overestimates its variance in expectation by sum_j (mu_j - mu)^2 / (n (n - 1)) (mu_j the
    strata's means): an upper bound, never an underestimate. kwargs: elbo's (form, divergence, probe,
    time_sampling, t_eps, t_min, probes)."""
    check_draws(num_draws, kwargs.get("probes", 1))
    b = x.shape[0]
    tiled = jnp.tile(x, (num_draws,) + (1,) * (x.ndim - 1))
    q = time_proposal_on(time_sampling, sde, t_eps, float(t_min))
    if stratified and num_draws > 1:
        q = StratifiedTime(q, jnp.repeat(jnp.arange(num_draws), b), num_draws)
    draws = jnp.reshape(elbo(score_fn, sde, tiled, rng, num_samples=1, time_sampling=q, t_eps=t_eps, t_min=t_min,
                             **kwargs), (num_draws, b))
    mean = jnp.mean(draws, axis=0)
    if num_draws == 1:
        return mean, jnp.zeros_like(mean)
    return mean, jnp.var(draws, axis=0, ddof=1) / num_draws


STEP_SIZES = ("batch", "per_example")


def ode_logp(score_fn, sde, x, rng, rtol=1e-5, atol=1e-5, divergence="exact", probe="rademacher",
             t_min=0.0, max_steps=4096, prior_logp=None, step_size="batch"):
    """log p(x) [B] under the probability-flow ODE dy/ds = f - g^2 score / 2, and the number of evaluations.

    log p(x) = log p_prior(y_T) + int_{t0}^T div(f - g^2 score / 2)(y_s, s) ds, t0 = sde.truncation_time(t_min)
    (t_min itself for a fixed schedule; the time of the reference's gamma(t_min) for a learned one), solved by
    sampling.solve_adaptive (Tsit5, PID step-size control). step_size "batch": the whole batch as one system
    (one error norm, one step size); "per_example": each example its own solve and step size (vmapped over
    the batch: the loop runs until the slowest example is done, the others masked). With
    divergence="hutchinson" one probe per example is drawn and held fixed along the path (FFJORD). NFE counts
    the drift evaluations of the solver (6 per attempted Tsit5 step plus the first, by FSAL; per_example: the
    largest over the batch, which sets the wall time); it is -1 when the solver needed more than max_steps
    steps (the log p values are then meaningless). `prior_logp(y_T) -> [B]` replaces the SDE's prior, e.g. by
    the exact p_T of a test mixture, which removes the (tiny) prior mismatch from the comparison.
    """
    check_choice("divergence", divergence, DIVERGENCES, error=ValueError)
    check_choice("probe", probe, PROBES, error=ValueError)
    check_choice("step_size", step_size, STEP_SIZES, error=ValueError)
    check_x(x)
    v = draw_probe(rng, x.shape, probe) if divergence == "hutchinson" else jnp.zeros_like(x)

    def solve(x, v):
        b = x.shape[0]

        def vector_field(s, state):
            t = jnp.full((b,), s)
            return value_and_divergence(lambda z: probability_flow_drift(score_fn, sde, z, t), state[0],
                                        divergence=divergence, v=v if divergence == "hutchinson" else None)

        return solve_adaptive(vector_field, (x, jnp.zeros((b,), x.dtype)), sde.truncation_time(t_min), sde.T, rtol,
                              atol, max_steps, throw=False)

    # A vmap over one example is the batch solve itself (jit of a size-1 vmap gave wrong values on XLA:CPU).
    if step_size == "batch" or x.shape[0] == 1:
        (y_T, delta), nfe = solve(x, v)
    else:
        (y_T, delta), nfes = jax.vmap(lambda xi, vi: solve(xi[None], vi[None]))(x, v)
        y_T, delta = y_T[:, 0], delta[:, 0]
        nfe = jnp.where(jnp.any(nfes < 0), -1, jnp.max(nfes))
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
# How training data are made continuous: uniform noise in the bin (z = (x + u) / K; its matched bound is uniform
# dequantization at t = 0) or none, the bin centres z = (x + 1/2) / K (the i-DODE way: the model's density at
# t_eps is a mixture of narrow kernels around the centres; its matched bound is the truncated normal at t_eps).
TRAINING_DEQUANTIZATIONS = ("uniform", "none")
MATCHED_DEQUANTIZATION = {"uniform": "uniform", "none": "truncated_normal"}


def to_model_space(rng, x, levels, transform="logit", alpha=0.05, dequantization="uniform"):
    """Data -> the space the diffusion runs in, and log|dy/dz| [B] for exact bpd.

    Discrete x (levels K): z = dequantize(x) ("uniform") or the bin centre (x + 1/2) / K ("none"; rng unused),
    then y = logit(alpha + (1 - 2 alpha) z) ("logit") or y = 2 z - 1 ("scale", log|dy/dz| = d log 2).
    Continuous x (levels None): y = x, log|dy/dz| = 0.
    """
    if levels is None:
        return x, jnp.zeros(x.shape[:1], x.dtype)
    check_choice("transform", transform, TRANSFORMS, error=ValueError)
    check_choice("dequantization", dequantization, TRAINING_DEQUANTIZATIONS, error=ValueError)
    z = dequantize(rng, x, levels) if dequantization == "uniform" else (x + 0.5) / levels
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



# ----------------------------------------------------------------------------------------------
# Dequantization as a choice of evaluation: lower bounds on the discrete log P(x) of x in {0..L-1}^d.
#
# A monotone per-dimension transform h (TRANSFORMS) maps x's bin [x/L, (x+1)/L) to a box [lo, hi) in model
# space. Every convention draws y ~ q(y | x) inside (a scaled copy of) that box and bounds
#     log P(x) >= E_q[ log p_{t0}(y) - log q(y | x) ]                                  (Jensen)
#     log P(x) >= E[ log mean_k exp(log p_{t0}(y_k) - log q(y_k | x)) ],  y_1..y_K iid ~ q   (importance-weighted)
# and bpd = -bound / (d ln 2): no other constant, every one of them is inside log q (docs/likelihood.md).

DEQUANTIZATIONS = ("uniform", "truncated_normal")


def dequantization_time(dequantization, t_eps):
    """t0, the time whose model density the dequantized y is scored under: 0 (uniform) or t_eps."""
    check_choice("dequantization", dequantization, DEQUANTIZATIONS, error=ValueError)
    return 0.0 if dequantization == "uniform" else float(t_eps)


def _transform(z, transform, alpha):
    """y = h(z) elementwise: logit(alpha + (1 - 2 alpha) z) or 2 z - 1."""
    if transform == "logit":
        p = alpha + (1.0 - 2.0 * alpha) * z
        return jnp.log(p) - jnp.log1p(-p)
    return 2.0 * z - 1.0


def bin_box(x, levels, transform="logit", alpha=0.05):
    """(lo, hi, centre), each the shape of x: x's bin [x/L, (x+1)/L) in model space, [h(x/L), h((x+1)/L)), and
    the image of its centre h((x + 1/2)/L). x: integer levels in {0..L-1} as floats [B, ...]."""
    check_choice("transform", transform, TRANSFORMS, error=ValueError)
    h = lambda z: _transform(z, transform, alpha)
    return h(x / levels), h((x + 1.0) / levels), h((x + 0.5) / levels)


def dequantize_uniform(rng, x, levels, transform="logit", alpha=0.05):
    """(y, log q(y | x) [B]): uniform dequantization at t0 = 0, y = h((x + u) / L), u ~ U[0,1)^d.

    q(y | x) = L^d / |dy/dz| on the box, so log q = d log L - log|dy/dz| and the bound
    log p_0(y) - log q = log p_0(y) + log|dy/dz| - d log L is today's bpd formula times -d ln 2.
    The same draws as to_model_space with the same rng."""
    y, logdet = to_model_space(rng, x, levels, transform, alpha)
    return y, math.prod(x.shape[1:]) * math.log(levels) - logdet


def normal_mass_log(a, b):
    """log(Phi(b) - Phi(a)) elementwise for a < b, stable in both tails (computed on the side a + b <= 0)."""
    flip = a + b > 0
    lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    log_hi, log_lo = jax.scipy.special.log_ndtr(hi), jax.scipy.special.log_ndtr(lo)
    return log_hi + jnp.log1p(-jnp.exp(jnp.minimum(log_lo - log_hi, -1e-7)))


def truncated_standard_normal(rng, a, b):
    """(e, log density of e) elementwise: e ~ N(0, 1) truncated to [a, b], by the inverse CDF on the side
    a + b <= 0 (where Phi has its precision). log density = -e^2/2 - log(2 pi)/2 - log(Phi(b) - Phi(a))."""
    flip = a + b > 0
    lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    u = jax.random.uniform(rng, a.shape, a.dtype)
    c_lo, c_hi = jax.scipy.special.ndtr(lo), jax.scipy.special.ndtr(hi)
    e = jnp.clip(jax.scipy.special.ndtri(c_lo + u * (c_hi - c_lo)), lo, hi)
    e = jnp.where(flip, -e, e)
    return e, -0.5 * e**2 - 0.5 * math.log(2 * math.pi) - normal_mass_log(a, b)


def dequantize_truncated_normal(rng, x, levels, sde, t_eps, transform="logit", alpha=0.05):
    """(y, log q(y | x) [B]): truncated-normal dequantization at t0 = t_eps (i-DODE), y of the shape of x.

    With (lo, hi, c) = bin_box(x) and alpha, sigma at sde.truncation_time(t_eps) (t_eps for a fixed schedule,
    the reference's gamma(t_eps) for a learned one): y = alpha c + sigma e,
    e ~ N(0, I) truncated to [alpha (lo - c) / sigma, alpha (hi - c) / sigma] per dimension, i.e. the diffusion
    kernel N(alpha c, sigma^2 I) restricted to Y / alpha in x's box. Its density, per dimension,
        log q = -e^2/2 - log(2 pi)/2 - log sigma - log(Phi(b) - Phi(a)).
    The discrete model behind the bound is P(x) = P_model(Y_{t_eps} / alpha in x's box) (boxes are disjoint,
    so sum_x P(x) <= 1); y is scored by the model's density at t_eps itself, with no Jacobian: the bound is
    log p_{t_eps}(y) - log q(y | x). Any centre c gives a valid bound; h((x + 1/2)/L) is the training data's."""
    lo, hi, c = bin_box(x, levels, transform, alpha)
    t = jnp.full(x.shape[:1], sde.truncation_time(t_eps), x.dtype)
    a_t, s_t = (bcast(v, x) for v in sde.alpha_sigma(t))
    e, log_e = truncated_standard_normal(rng, a_t * (lo - c) / s_t, a_t * (hi - c) / s_t)
    return a_t * c + s_t * e, per_example_sum(log_e - jnp.log(s_t))


def dequantize_as(rng, x, levels, dequantization, sde=None, t_eps=1e-3, transform="logit", alpha=0.05):
    """(y, log q(y | x) [B]) by `dequantization` (one of DEQUANTIZATIONS); y is scored at dequantization_time."""
    check_choice("dequantization", dequantization, DEQUANTIZATIONS, error=ValueError)
    check_x(x)
    if dequantization == "uniform":
        return dequantize_uniform(rng, x, levels, transform, alpha)
    if sde is None:
        raise ValueError("dequantization='truncated_normal' needs sde (its kernel at t_eps), got None")
    return dequantize_truncated_normal(rng, x, levels, sde, t_eps, transform, alpha)


def importance_weighted_bound(log_density, rng, x, levels, dequantization="uniform", importance_samples=1,
                              sde=None, t_eps=1e-3, transform="logit", alpha=0.05):
    """A lower bound on the discrete log P(x) in nats, [B], for x [B, ...] integer levels:

        bound = log (1/K) sum_k exp(log p(y_k) - log q(y_k | x)),   y_k ~ q iid,   K = importance_samples

    (unrolled), `log_density(rng, y) -> [B]` the model's log p_{t0}(y) (t0 = dequantization_time). K = 1 is the
    plain bound E_q[log p - log q], linear in log p: an unbiased estimate of log p (an ELBO, or an ODE with a
    Hutchinson trace) keeps it a bound in expectation. For K > 1 log-mean-exp is convex: noise in log p pushes
    its expectation up, by an amount no estimate of the noise bounds without assuming its distribution, so
    log_density must then be exact (the probability-flow ODE with the exact trace; experiment.make_elbo_fn and
    make_ode_fn refuse the others).
    """
    if not (isinstance(importance_samples, int) and importance_samples >= 1):
        raise ValueError(f"importance_samples must be an int >= 1, got {importance_samples!r}")
    log_w = []
    for k in [rng] if importance_samples == 1 else jax.random.split(rng, importance_samples):
        k_q, k_p = jax.random.split(k)
        y, log_q = dequantize_as(k_q, x, levels, dequantization, sde, t_eps, transform, alpha)
        log_w.append(log_density(k_p, y) - log_q)
    if importance_samples == 1:
        return log_w[0]
    return jax.nn.logsumexp(jnp.stack(log_w), axis=0) - math.log(importance_samples)


def bpd_of_bound(bound, d):
    """-bound / (d ln 2): bits per dimension of a lower bound on the discrete log P(x) [B] (an upper bound on
    the discrete NLL). Every convention's constants (log2 L, log|dy/dz|, the truncated normal's mass) are
    already inside the bound's log q."""
    return -bound / (d * math.log(2.0))
