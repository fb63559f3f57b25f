"""Dequantization conventions against the exact discrete log P(x) of a quantized Gaussian mixture.

x is the bin of a draw from a mixture with diagonal covariances in model space; the transforms are monotone
per dimension, so each bin is a box and log P(x) (and its counterpart at t_eps, P(Y_t / alpha in the box))
is a sum over components of products of normal CDF differences (GaussianMixture.box_logp). Every bound must
lie below its target within Monte-Carlo error, the importance-weighted bound must rise toward it as K grows.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffvar.likelihood import (bin_box, bpd, bpd_of_bound, dequantization_time, dequantize_as, elbo,
                                elbo_mean_and_variance, importance_weighted_bound, ode_logp,
                                to_model_space, truncated_standard_normal)
from diffvar.mixture import GaussianMixture, score_fn_for
from diffvar.sde import VPSDE

T_EPS = 1e-3
LEVELS = 8
PRIOR_TOL = 0.01  # the ELBO's prior mismatch with the exact score, nats (tests/test_likelihood.py)
# Each transform with a mixture that puts most of its mass inside the transform's range of boxes.
MIXTURES = {
    "scale": GaussianMixture.create_diagonal([0.3, 0.7], [[-0.4, 0.3], [0.35, -0.2]], [[0.04, 0.09], [0.06, 0.02]]),
    "logit": GaussianMixture.create_diagonal([0.5, 0.5], [[-1.0, 0.5], [1.0, -0.8]], [[0.8, 0.5], [0.4, 1.2]]),
}


def quantize(y, transform, alpha=0.05):
    """The bin x in {0..L-1} of model-space y (clipped to the edge bins), as floats."""
    z = (y + 1.0) / 2.0 if transform == "scale" else (jax.nn.sigmoid(y) - alpha) / (1.0 - 2.0 * alpha)
    return jnp.clip(jnp.floor(z * LEVELS), 0, LEVELS - 1)


def data(transform, n=400, seed=0):
    mix = MIXTURES[transform]
    return mix, quantize(mix.sample(jax.random.PRNGKey(seed), n), transform)


def target(mix, x, dequantization, transform, sde):
    """The exact log P(x) [B] the convention bounds: of Y_0 (uniform) or of Y_{t_eps} / alpha (truncated)."""
    lo, hi, _ = bin_box(x, LEVELS, transform)
    if dequantization == "uniform":
        return mix.box_logp(lo, hi)
    return mix.box_logp(lo, hi, sde, jnp.full(x.shape[:1], T_EPS))


def exact_density(mix, sde, t0):
    """log_density(rng, y) -> (log p_{t0}(y), 0): the mixture's own marginal, no noise."""
    def log_density(rng, y):
        logp = mix.logp(y) if t0 == 0.0 else mix.marginal_logp(sde, y, jnp.full(y.shape[:1], t0))
        return logp, jnp.zeros_like(logp)
    return log_density


def mean_se(v):
    v = np.asarray(v, np.float64)
    return v.mean(), v.std(ddof=1) / math.sqrt(v.size)


def test_box_logp_is_the_frequency_of_the_bin():
    """exp(box_logp) against the bins of 100k draws, at t = 0 and at t_eps (Y_t / alpha binned)."""
    sde, n = VPSDE(), 100_000
    for transform, mix in MIXTURES.items():
        y = mix.sample(jax.random.PRNGKey(1), n)
        t = jnp.full((n,), 0.3)  # a large t, so that the kernel matters
        alpha, sigma = sde.alpha_sigma(t)
        y_t = alpha[:, None] * y + sigma[:, None] * jax.random.normal(jax.random.PRNGKey(2), y.shape)
        for ys, kw in [(y, {}), (y_t / alpha[:, None], dict(sde=sde, t=t[:4]))]:
            z = (ys + 1) / 2 if transform == "scale" else (jax.nn.sigmoid(ys) - 0.05) / 0.9
            inside = np.all((z >= 0) & (z < 1), axis=1)
            x = np.floor(np.asarray(z) * LEVELS)
            seen, counts = np.unique(x[inside], axis=0, return_counts=True)
            cells = seen[np.argsort(-counts)[[0, 1, 3, 7]]].astype(np.float32)  # frequent and rarer bins
            lo, hi, _ = bin_box(jnp.asarray(cells), LEVELS, transform)
            p = np.exp(np.asarray(mix.box_logp(lo, hi, **kw), np.float64))
            freq = np.array([np.mean(inside & np.all(x == c, axis=1)) for c in cells])
            se = np.sqrt(p * (1 - p) / n)
            assert np.all(np.abs(freq - p) < 4 * se + 1e-5), (transform, kw.keys(), freq, p)
            assert np.all(p > 1e-3)  # the comparison has power


@pytest.mark.parametrize("a, b", [(-0.3, 0.4), (4.0, 6.0), (-7.0, -5.0), (-2.0, 9.0)])
def test_truncated_standard_normal_against_scipy(a, b):
    n = 20_000
    a_, b_ = jnp.full((n,), a), jnp.full((n,), b)
    e, log_q = truncated_standard_normal(jax.random.PRNGKey(0), a_, b_)
    e = np.asarray(e, np.float64)
    assert e.min() >= a and e.max() <= b
    np.testing.assert_allclose(log_q, stats.truncnorm.logpdf(e, a, b), rtol=1e-4, atol=2e-3)
    m, se = mean_se(e)
    assert abs(m - stats.truncnorm.mean(a, b)) < 4 * se + 1e-4
    assert stats.kstest(e, stats.truncnorm(a, b).cdf).pvalue > 1e-3


@pytest.mark.parametrize("dequantization", ["uniform", "truncated_normal"])
@pytest.mark.parametrize("transform", ["scale", "logit"])
def test_log_q_is_a_density_on_the_box(dequantization, transform):
    """E_q[1 / q(y | x)] is the volume of q's support: prod(hi - lo) (uniform), alpha^d prod(hi - lo) (truncated);
    and every draw lies in it. Checks log q's constants, the Jacobian and the truncation mass. (At t = 0.05,
    where the kernel's width is comparable to the box: at 1e-3 the 1/q of the tails is never sampled.)"""
    sde, t = VPSDE(), 0.05
    x = jnp.tile(jnp.array([[0.0, 3.0], [7.0, 5.0]]), (20_000, 1))
    y, log_q = dequantize_as(jax.random.PRNGKey(0), x, LEVELS, dequantization, sde, t, transform)
    lo, hi, _ = bin_box(x, LEVELS, transform)
    a = 1.0 if dequantization == "uniform" else float(sde.alpha_sigma(jnp.array([t]))[0][0])
    assert bool(jnp.all((y >= a * lo - 1e-6) & (y <= a * hi + 1e-6)))
    volume = np.prod(np.asarray(a * (hi - lo), np.float64), axis=1)
    ratio = (np.exp(-np.asarray(log_q, np.float64)) / volume).reshape(-1, 2)
    for j in range(2):
        m, se = mean_se(ratio[:, j])
        assert abs(m - 1.0) < 4 * se + 1e-4 and se < 0.05, (j, m, se)


def test_uniform_bound_is_todays_bpd():
    """dequantize_as('uniform') with K = 1 is the old formula: bpd(log p, log|dy/dz|, d, L), same draws."""
    x = jax.random.randint(jax.random.PRNGKey(0), (16, 4, 4, 1), 0, 17).astype(jnp.float32)
    logp = jax.random.normal(jax.random.PRNGKey(1), (16,))
    y, logdet = to_model_space(jax.random.PRNGKey(2), x, 17)
    y2, log_q = dequantize_as(jax.random.PRNGKey(2), x, 17, "uniform")
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_allclose(bpd_of_bound(logp - log_q, 16), bpd(logp, logdet, 16, 17), rtol=1e-5)
