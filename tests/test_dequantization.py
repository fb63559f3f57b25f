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

from diffvar.dequantization import (
    DequantizationOptions,
    bin_box,
    bpd,
    dequantize,
    forward_transform,
    importance_weighted_bound,
    inverse_transform,
    to_model_space,
    truncated_standard_normal,
)
from diffvar.elbo import elbo
from diffvar.mixture import GaussianMixture, score_fn_for
from diffvar.ode import ode_logp
from diffvar.sde import VPSDE
from tests.helpers import exact_prior

T_EPS = 1e-3
LEVELS = 8
PRIOR_TOL = 0.01  # the ELBO's prior mismatch with the exact score, nats (tests/test_elbo.py)
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
    """log_density(rng, y) -> log p_{t0}(y): the mixture's own marginal, no noise."""

    def log_density(rng, y):
        return mix.logp(y) if t0 == 0.0 else mix.marginal_logp(sde, y, jnp.full(y.shape[:1], t0))

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
    y, log_q = dequantize(jax.random.PRNGKey(0), x, LEVELS, dequantization, sde, t, transform)
    lo, hi, _ = bin_box(x, LEVELS, transform)
    a = 1.0 if dequantization == "uniform" else float(sde.alpha_sigma(jnp.array([t]))[0][0])
    assert bool(jnp.all((y >= a * lo - 1e-6) & (y <= a * hi + 1e-6)))
    volume = np.prod(np.asarray(a * (hi - lo), np.float64), axis=1)
    ratio = (np.exp(-np.asarray(log_q, np.float64)) / volume).reshape(-1, 2)
    for j in range(2):
        m, se = mean_se(ratio[:, j])
        assert abs(m - 1.0) < 4 * se + 1e-4 and se < 0.05, (j, m, se)


def test_uniform_bound_is_todays_bpd():
    """dequantize('uniform') with K = 1 is the old formula, -(log p + log|dy/dz|) / (d ln 2) + log2 L, with the
    draws of to_model_space."""
    x = jax.random.randint(jax.random.PRNGKey(0), (16, 4, 4, 1), 0, 17).astype(jnp.float32)
    logp = jax.random.normal(jax.random.PRNGKey(1), (16,))
    y, logdet = to_model_space(jax.random.PRNGKey(2), x, 17)
    y2, log_q = dequantize(jax.random.PRNGKey(2), x, 17, "uniform")
    np.testing.assert_array_equal(y, y2)
    formula = -(np.asarray(logp) + np.asarray(logdet)) / (16 * math.log(2.0)) + math.log2(17)
    np.testing.assert_allclose(bpd(logp - log_q, 16), formula, rtol=1e-5)


def test_bpd_of_a_known_density_on_the_unit_cube():
    """p(z) = prod_i 2 z_i on [0,1]^d observed at K levels: the dequantized bound is known in closed form,
    E_u[-log2 p((x+u)/K)]/d + log2 K, and it upper-bounds the exact discrete NLL -log2 prod((2x+1)/K^2)/d."""
    K, d = 17, 64
    x = jax.random.randint(jax.random.PRNGKey(0), (4000, 8, 8, 1), 0, K).astype(jnp.float32)
    z = (x + jax.random.uniform(jax.random.PRNGKey(1), x.shape)) / K  # to_model_space's draws
    assert float(z.min()) >= 0.0 and float(z.max()) < 1.0
    y, logdet = forward_transform(z, "logit", alpha=0.05)
    for a, b in zip((y, logdet), to_model_space(jax.random.PRNGKey(1), x, K, "logit", 0.05)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(inverse_transform(y, "logit", alpha=0.05), z, atol=1e-5)
    log_pz = jnp.sum(jnp.log(2 * z).reshape(4000, -1), axis=1)
    log_py = log_pz - logdet  # the density of y = logit(...) is p_z / |dy/dz|
    got = bpd(log_py + logdet - d * math.log(K), d)  # the bound log p(y) - log q, q = K^d / |dy/dz|
    xs = np.asarray(x, np.float64).reshape(4000, -1)
    e_log = (xs + 1) * np.log(xs + 1) - (xs + 1) - np.where(xs > 0, xs * np.log(np.maximum(xs, 1)) - xs, 0.0)
    expected = -(np.log(2.0 / K) + e_log).sum(1) / (d * math.log(2)) + math.log2(K)
    diff = np.asarray(got, np.float64) - expected
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(diff.size) + 1e-4
    exact_nll = -np.log2((2 * xs + 1) / K**2).sum(1) / d
    assert np.all(expected >= exact_nll - 1e-9)
    # Log-Jacobian of the logit transform against autodiff.
    jac = jax.vmap(jax.grad(lambda v: jnp.sum(forward_transform(v[None], "logit", 0.05)[0])))(z[:3].reshape(3, -1))
    np.testing.assert_allclose(logdet[:3], jnp.sum(jnp.log(jac), axis=1), rtol=1e-4)


def iw_gaps(mix, x, dequantization, transform, sde, ks, log_density=None, seed=3):
    """{K: per-example bound - exact target [B]} of the importance-weighted bound, jitted, same x."""
    t0 = DequantizationOptions(dequantization, truncated_normal_t=T_EPS).time
    log_density = log_density or exact_density(mix, sde, t0)
    exact = np.asarray(target(mix, x, dequantization, transform, sde), np.float64)
    with_aux = lambda r, y: (log_density(r, y), ())
    out = {}
    for k in ks:
        fn = jax.jit(
            lambda x, r: importance_weighted_bound(with_aux, r, x, LEVELS, dequantization, k, sde, T_EPS, transform)[0]
        )
        out[k] = np.asarray(fn(x, jax.random.PRNGKey(seed)), np.float64) - exact
    return out


@pytest.mark.parametrize("dequantization", ["uniform", "truncated_normal"])
@pytest.mark.parametrize("transform", ["scale", "logit"])
def test_bounds_lie_below_the_exact_log_probability_and_rise_with_k(dequantization, transform):
    """With the model's exact density: every bound <= log P(x) within Monte-Carlo error, and the
    importance-weighted bound rises toward it (gap(1) < gap(4) < gap(16) <= 0, each step significant)."""
    sde = VPSDE()
    mix, x = data(transform, n=2000)
    gaps = iw_gaps(mix, jnp.tile(x, (1, 1)), dequantization, transform, sde, (1, 4, 16))
    for k, g in gaps.items():
        m, se = mean_se(g)
        assert m < 4 * se + 1e-4, (k, m, se)
    m1, se1 = mean_se(gaps[1])
    # Power: the s.e. is below 0.05 nats (a bound 0.2 nats above log P(x) would fail), and the plain bound's gap
    # is one the test can see.
    assert se1 < 0.05 and m1 < -4 * se1, (m1, se1)
    for a, b in [(1, 4), (4, 16)]:
        d, se = mean_se(gaps[b] - gaps[a])
        assert d > 3 * se, (a, b, d, se)
    if dequantization == "uniform":  # q = uniform on the bin is close to the posterior of a smooth density
        assert abs(gaps[16].mean()) < 0.5 * abs(m1)
    elif transform == "scale":
        # The kernel at t_eps (std ~0.01) is far narrower than the bin (0.25) over which this smooth p_{t_eps} is
        # nearly flat: the plain bound's gap is then KL(q || uniform on alpha * box) = sum_d log(alpha width /
        # (sqrt(2 pi e) sigma)), ~1.75 nats per dimension; importance weighting recovers it only slowly.
        alpha, sigma = (float(v[0]) for v in sde.alpha_sigma(jnp.array([T_EPS])))
        predicted = -2 * math.log(alpha * 2 / LEVELS / (math.sqrt(2 * math.pi * math.e) * sigma))
        assert abs(m1 - predicted) < 0.1 * abs(predicted), (m1, predicted)


def test_truncated_normal_is_tight_for_discrete_data_and_uniform_is_not():
    """Data that are truly discrete (a model whose p_0 is a spike of std 1e-3 at each bin's centre, as a
    trained model of quantized data learns): the diffusion kernel at t_eps is nearly the model's posterior in
    the bin, so the truncated-normal bound (K = 1) is within 0.05 nats/dim of log P(x); uniform dequantization at
    t = 0 spreads q over the bin where p_0 is ~0 and loses thousands of nats per dimension. Both targets are
    log w of the bin's component (to 1e-3)."""
    sde = VPSDE()
    grid = jnp.array([[1.0, 2.0], [5.0, 6.0], [3.0, 3.0]])
    _, _, centres = bin_box(grid, LEVELS, "scale")
    mix = GaussianMixture.create_diagonal([0.2, 0.5, 0.3], centres, jnp.full((3, 2), 1e-6))
    x = jnp.tile(grid, (100, 1))
    for deq in ("uniform", "truncated_normal"):
        np.testing.assert_allclose(target(mix, x, deq, "scale", sde)[:3], np.log([0.2, 0.5, 0.3]), atol=1e-3)
    tn = iw_gaps(mix, x, "truncated_normal", "scale", sde, (1,))[1] / 2
    un = iw_gaps(mix, x, "uniform", "scale", sde, (1,))[1] / 2
    m, se = mean_se(tn)
    assert -0.05 < m < 4 * se + 1e-4 and se < 0.01 and un.mean() < -1000, (m, se, un.mean())


def test_elbo_and_ode_from_t_eps_give_the_density_at_t_eps():
    """log p_{t_min}(y) by elbo(t_min=t_eps) (ISM uniform and importance, DSM) and ode_logp(t_min=t_eps) with the
    exact score equals the mixture's marginal at t_eps (the ELBO within MC error + the prior gap)."""
    sde = VPSDE()
    mix, x = data("scale", n=1000)
    y, _ = dequantize(jax.random.PRNGKey(0), x, LEVELS, "truncated_normal", sde, T_EPS, "scale")
    exact = np.asarray(mix.marginal_logp(sde, y, jnp.full((y.shape[0],), T_EPS)), np.float64)
    score = score_fn_for(mix, sde)
    for kw in [
        dict(form="ism", time_sampling="uniform"),
        dict(form="ism", time_sampling="importance"),
        dict(form="dsm", time_sampling="importance"),
    ]:
        mean = jax.jit(lambda y: elbo(score, sde, y, jax.random.PRNGKey(1), t_min=T_EPS, draws=100, t_eps=T_EPS, **kw))(
            y
        )
        m, se = mean_se(np.asarray(mean, np.float64) - exact)
        assert abs(m) < 4 * se + PRIOR_TOL and se < 0.1, (kw, m, se)  # an error of 0.4 nats is caught
    logp, _ = jax.jit(
        lambda y: ode_logp(
            score, sde, y, jax.random.PRNGKey(0), rtol=1e-6, atol=1e-6, t_min=T_EPS, prior_logp=exact_prior(mix, sde)
        )
    )(y)
    np.testing.assert_allclose(logp, exact, atol=5e-3)


def test_importance_weighted_elbo_noise_counts_as_gain_which_is_why_it_is_refused():
    """K = 8 truncated-normal samples with log p(y_k) from the exact score's ELBO (one draw, unbiased): Jensen
    pushes the log-mean-exp above the same bound with the exact density, and above log P(x) itself: not a bound,
    so experiment.make_elbo_fn refuses K > 1 (and make_ode_fn the Hutchinson trace at K > 1)."""
    sde = VPSDE()
    mix, x = data("scale", n=500)
    score = score_fn_for(mix, sde)
    noisy = lambda rng, y: elbo(
        score, sde, y, rng, t_min=T_EPS, draws=1, form="dsm", time_sampling="importance", t_eps=T_EPS
    )
    exact = iw_gaps(mix, x, "truncated_normal", "scale", sde, (8,))[8]
    raw = iw_gaps(mix, x, "truncated_normal", "scale", sde, (8,), noisy)[8]
    up, se_up = mean_se(raw - exact)
    assert up > 4 * se_up, (up, se_up)  # the bias is real
    above, se = mean_se(raw)
    assert above > 4 * se, (above, se)  # and it lifts the "bound" above log P(x)


def test_exact_trace_ode_importance_weighted_bound_lies_below_log_p_and_rises_with_k():
    """The probability-flow ODE with the exact trace and the exact score inside the truncated-normal
    importance-weighted bound (the only K > 1 estimate diffvar reports): at K = 1 and 8 it is <= log P(x) within
    Monte-Carlo error plus the solver's tolerance, and K = 8 is significantly closer to it."""
    sde, transform = VPSDE(), "scale"
    mix, x = data(transform, n=300)
    score = score_fn_for(mix, sde)
    ode = lambda rng, y: ode_logp(
        score, sde, y, rng, rtol=1e-5, atol=1e-5, divergence="exact", t_min=T_EPS, prior_logp=exact_prior(mix, sde)
    )[0]
    gaps = iw_gaps(mix, x, "truncated_normal", transform, sde, (1, 8), ode)
    for k, g in gaps.items():
        m, se = mean_se(g)
        assert m < 4 * se + 5e-3, (k, m, se)  # 5e-3: the solver's tolerance (test_elbo_and_ode_from_t_eps_...)
    assert mean_se(gaps[1])[1] < 0.1 and mean_se(gaps[1])[0] < -4 * mean_se(gaps[1])[1]  # a gap the test sees
    d, se = mean_se(gaps[8] - gaps[1])
    assert d > 4 * se, (d, se)


def test_importance_weighted_bound_under_jit_equals_op_by_op():
    """K = 1 and K = 3 (the draws are unrolled, never a vmap over one sample: see test_elbo's jit test)."""
    sde = VPSDE()
    mix, x = data("logit", n=300)
    log_density = exact_density(mix, sde, T_EPS)
    for k in (1, 3):
        fn = lambda x: importance_weighted_bound(
            lambda r, y: (log_density(r, y), ()),
            jax.random.PRNGKey(4),
            x,
            LEVELS,
            "truncated_normal",
            k,
            sde,
            T_EPS,
            "logit",
        )[0]
        np.testing.assert_allclose(jax.jit(fn)(x), fn(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dequantization="gaussian"), "dequantization.*uniform.*truncated_normal"),
        (dict(importance_samples=0), "importance_samples must be an int >= 1"),
        (dict(dequantization="truncated_normal", sde=None), "needs sde"),
    ],
)
def test_invalid_arguments_name_themselves(kwargs, match):
    args = dict(dequantization="uniform", importance_samples=1, sde=VPSDE())
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        importance_weighted_bound(lambda r, y: (y[:, 0], ()), jax.random.PRNGKey(0), jnp.ones((2, 3)), 8, **args)


def test_centre_training_data_and_its_matched_evaluation():
    """data.dequantization='none' trains on the bin centres h((x + 1/2) / L) (bin_box's centre, the truncated
    normal's), and eval.dequantization='auto' then evaluates with the truncated normal; the default stays uniform."""
    from diffvar.evaluator import EvalSpec
    from tests.helpers import load_config

    x = jnp.asarray([[0.0, 3.0, 16.0]])
    for transform in ("logit", "scale"):
        y, _ = to_model_space(jax.random.PRNGKey(0), x, 17, transform, 0.05, "none")
        np.testing.assert_allclose(y, bin_box(x, 17, transform)[2], rtol=1e-6)
    c = load_config("digits")
    assert (c.data.dequantization, c.eval.dequantization) == ("uniform", "auto")
    assert EvalSpec.from_config(c).deq.dequantization == "uniform"
    c.data.dequantization = "none"
    assert EvalSpec.from_config(c).deq.dequantization == "truncated_normal"
    assert EvalSpec.from_config(c, dequantization="uniform").deq.dequantization == "uniform"
