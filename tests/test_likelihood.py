"""ELBO, ODE likelihood and bpd accounting against the exact Gaussian-mixture answers."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffvar.likelihood import (bpd, dequantize, draw_probe, elbo, logit_inverse, logit_transform, ode_logp,
                                value_and_divergence)
from diffvar.mixture import random_mixture, score_fn_for
from diffvar.sde import SubVPSDE, VESDE, VPSDE

# The ELBO with the exact score equals log p(x) up to the prior mismatch E[log pi(Y_T) - log p_T(Y_T)],
# which for these SDEs and mixtures is below PRIOR_TOL nats (checked in test_prior_gap_is_small).
PRIOR_TOL = 0.01


def _elbo_gap(sde, mix, num_x, repeats, shape=None, score_fn=None, seed=0, **kwargs):
    """Per-example ELBO(x) - log p(x) [num_x] (each averaged over `repeats` draws), x ~ mixture."""
    x = mix.sample(jax.random.PRNGKey(seed), num_x)
    score_fn = score_fn or score_fn_for(mix, sde)
    xs = x if shape is None else jnp.reshape(x, (num_x,) + shape)
    est = jax.jit(lambda xs, k: elbo(score_fn, sde, xs, k, num_samples=repeats, **kwargs))(
        xs, jax.random.PRNGKey(seed + 1))
    return np.asarray(est - mix.logp(x), np.float64)


def _assert_mean_close(values, target, tol=PRIOR_TOL):
    mean, se = values.mean(), values.std(ddof=1) / math.sqrt(values.size)
    assert abs(mean - target) < 4 * se + tol, f"mean {mean:.4f} +- {se:.4f}, expected {target:.4f}"
    return se


CASES = [
    dict(form="ism", time_sampling="uniform", divergence="hutchinson", probe="rademacher"),
    dict(form="ism", time_sampling="importance", divergence="hutchinson", probe="gaussian"),
    dict(form="ism", time_sampling="uniform", divergence="exact"),
    dict(form="dsm", time_sampling="importance"),
    dict(form="dsm", time_sampling="uniform"),
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: "-".join(map(str, k.values())))
def test_elbo_with_exact_score_equals_log_density_2d(kwargs):
    sde = VPSDE()
    mix = random_mixture(jax.random.PRNGKey(2), 2)
    repeats = 800 if kwargs["time_sampling"] == "uniform" and kwargs["form"] == "dsm" else 200
    se = _assert_mean_close(_elbo_gap(sde, mix, 4000, repeats, **kwargs), 0.0)
    assert se < 0.05  # the test has power: an error of 0.25 nats would be caught


@pytest.mark.parametrize("kwargs", CASES[:4], ids=lambda k: "-".join(map(str, k.values())))
def test_elbo_with_exact_score_equals_log_density_16d_images(kwargs):
    """16 dimensions, fed as [B, 4, 4, 1] images through a reshaping score function."""
    sde = VPSDE()
    mix = random_mixture(jax.random.PRNGKey(16), 16)
    se = _assert_mean_close(_elbo_gap(sde, mix, 4000, 200, shape=(4, 4, 1),
                                      score_fn=score_fn_for(mix, sde), **kwargs), 0.0)
    assert se < 0.1


@pytest.mark.parametrize("sde", [SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=30.0)], ids=["subvp", "ve"])
def test_elbo_exact_other_sdes(sde):
    mix = random_mixture(jax.random.PRNGKey(3), 2)
    _assert_mean_close(_elbo_gap(sde, mix, 2000, 100, form="ism", time_sampling="importance"), 0.0)
    _assert_mean_close(_elbo_gap(sde, mix, 2000, 100, form="dsm", time_sampling="importance"), 0.0)


def test_prior_gap_is_small():
    """E_x E[log pi(Y_T) - log p_T(Y_T)] (the ELBO's gap with the exact score) is below PRIOR_TOL."""
    for dim, sde in [(2, VPSDE()), (16, VPSDE()), (2, SubVPSDE()), (2, VESDE(sigma_min=0.01, sigma_max=30.0))]:
        mix = random_mixture(jax.random.PRNGKey(dim), dim)
        x = mix.sample(jax.random.PRNGKey(0), 20000)
        t = jnp.full((x.shape[0],), sde.T)
        mean, sigma = sde.marginal(x, t)
        y = mean + sigma[:, None] * jax.random.normal(jax.random.PRNGKey(1), x.shape)
        gap = float(jnp.mean(sde.prior_logp(y) - mix.marginal_logp(sde, y, t)))
        assert -PRIOR_TOL / 2 < gap <= 1e-3, (dim, type(sde).__name__, gap)


def test_elbo_below_log_density_by_the_exact_amount_for_a_shifted_score():
    """score + c loses E_x[KL] = |c|^2 / 2 * int_0^T g^2 ds nats on average over x ~ p (exact for VP)."""
    sde = VPSDE()
    mix = random_mixture(jax.random.PRNGKey(2), 2)
    c = jnp.array([0.25, -0.2])
    exact = score_fn_for(mix, sde)
    expected_loss = 0.5 * float(c @ c) * float(sde.int_beta(jnp.array(1.0)))
    for form, ts in [("ism", "uniform"), ("dsm", "importance")]:
        gaps = _elbo_gap(sde, mix, 20000, 10, score_fn=lambda y, t: exact(y, t) + c, form=form, time_sampling=ts)
        _assert_mean_close(gaps, -expected_loss)
        assert gaps.mean() < -0.3


def test_ism_and_dsm_forms_agree_for_an_arbitrary_score():
    """Stein's identity holds per x: both forms estimate the same number for any score function."""
    sde = VPSDE()
    score = lambda y, t: -0.7 * y + 0.5 * jnp.sin(2.0 * y[..., ::-1]) * (1.0 + t[:, None] ** 2)
    x = jnp.tile(jnp.array([[1.0, -0.5], [0.2, 2.0]]), (20000, 1))
    run = lambda form, ts, k: np.asarray(jax.jit(lambda k: elbo(score, sde, x, k, num_samples=10, form=form,
                                                                time_sampling=ts))(jax.random.PRNGKey(k)))
    ism = run("ism", "uniform", 0).reshape(-1, 2)
    dsm = run("dsm", "importance", 1).reshape(-1, 2)
    for j in range(2):
        diff = ism[:, j].mean() - dsm[:, j].mean()
        se = math.sqrt(ism[:, j].var() / len(ism) + dsm[:, j].var() / len(dsm))
        assert abs(diff) < 4 * se + 1e-3, (j, diff, se)
        assert se < 0.1


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_divergence_is_unbiased(probe):
    w = jax.random.normal(jax.random.PRNGKey(0), (6, 6))
    fn = lambda y: jnp.tanh(y @ w) * y
    y = jax.random.normal(jax.random.PRNGKey(1), (4, 6))
    _, exact = value_and_divergence(fn, y, divergence="exact")
    full = jnp.trace(jax.vmap(jax.jacfwd(lambda v: fn(v[None])[0]))(y), axis1=1, axis2=2)
    np.testing.assert_allclose(exact, full, rtol=1e-5, atol=1e-5)
    keys = jax.random.split(jax.random.PRNGKey(2), 20000)
    est = jax.vmap(lambda k: value_and_divergence(fn, y, k, "hutchinson", probe)[1])(keys)
    se = est.std(0) / math.sqrt(len(keys))
    assert np.all(np.abs(est.mean(0) - exact) < 4 * se + 1e-4)
    assert float(jnp.max(se)) < 0.1


def test_value_and_divergence_with_a_fixed_probe():
    """A given probe v is used as is (v . J v), and equals the estimate that draws the same v from rng."""
    w = jax.random.normal(jax.random.PRNGKey(0), (6, 6))
    fn = lambda y: jnp.tanh(y @ w) * y
    y = jax.random.normal(jax.random.PRNGKey(1), (4, 6))
    v = draw_probe(jax.random.PRNGKey(3), y.shape, "gaussian")
    out, div = value_and_divergence(fn, y, v=v)
    jac = jax.vmap(jax.jacfwd(lambda u: fn(u[None])[0]))(y)  # [B, d, d]
    np.testing.assert_allclose(out, fn(y), rtol=1e-6)
    np.testing.assert_allclose(div, jnp.einsum("bi,bij,bj->b", v, jac, v), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(div, value_and_divergence(fn, y, jax.random.PRNGKey(3), "hutchinson", "gaussian")[1])
    with pytest.raises(ValueError, match="needs rng or a fixed probe v"):
        value_and_divergence(fn, y)
    with pytest.raises(ValueError, match=r"v must have y's shape \(4, 6\)"):
        value_and_divergence(fn, y, v=v[:, :3])


@pytest.mark.parametrize("dim, divergence", [(2, "exact"), (16, "exact")])
def test_ode_logp_with_exact_score_equals_log_density(dim, divergence):
    sde = VPSDE()
    mix = random_mixture(jax.random.PRNGKey(dim), dim)
    x = mix.sample(jax.random.PRNGKey(1), 64)
    exact_pT = lambda z: mix.marginal_logp(sde, z, jnp.full((z.shape[0],), sde.T))
    logp, nfe = jax.jit(lambda x: ode_logp(score_fn_for(mix, sde), sde, x, jax.random.PRNGKey(0), rtol=1e-6,
                                           atol=1e-6, divergence=divergence, prior_logp=exact_pT))(x)
    np.testing.assert_allclose(logp, mix.logp(x), atol=2e-3 * math.sqrt(dim))
    assert 20 < int(nfe) < 4096 * 6
    # With the default N(0, I) prior the answer moves by at most the prior mismatch.
    logp_prior, _ = ode_logp(score_fn_for(mix, sde), sde, x, jax.random.PRNGKey(0), divergence=divergence)
    assert float(jnp.max(jnp.abs(logp_prior - mix.logp(x)))) < 0.3


def test_ode_logp_hutchinson_is_unbiased_on_images():
    sde = VPSDE()
    mix = random_mixture(jax.random.PRNGKey(16), 16)
    x = mix.sample(jax.random.PRNGKey(1), 4)
    xs = jnp.tile(jnp.reshape(x, (4, 4, 4, 1)), (64, 1, 1, 1))
    exact_pT = lambda z: mix.marginal_logp(sde, z.reshape(z.shape[0], -1), jnp.full((z.shape[0],), sde.T))
    logp, _ = ode_logp(score_fn_for(mix, sde), sde, xs, jax.random.PRNGKey(3),
                       divergence="hutchinson", prior_logp=exact_pT)
    est = np.asarray(logp).reshape(64, 4)
    se = est.std(0, ddof=1) / 8
    assert np.all(np.abs(est.mean(0) - np.asarray(mix.logp(x))) < 4 * se + 5e-3)


def test_bpd_of_a_known_density_on_the_unit_cube():
    """p(z) = prod_i 2 z_i on [0,1]^d observed at K levels: the dequantized bound is known in closed form,
    E_u[-log2 p((x+u)/K)]/d + log2 K, and it upper-bounds the exact discrete NLL -log2 prod((2x+1)/K^2)/d."""
    K, d = 17, 64
    x = jax.random.randint(jax.random.PRNGKey(0), (4000, 8, 8, 1), 0, K).astype(jnp.float32)
    z = dequantize(jax.random.PRNGKey(1), x, K)
    assert float(z.min()) >= 0.0 and float(z.max()) < 1.0
    y, logdet = logit_transform(z, alpha=0.05)
    np.testing.assert_allclose(logit_inverse(y, alpha=0.05), z, atol=1e-5)
    log_pz = jnp.sum(jnp.log(2 * z).reshape(4000, -1), axis=1)
    log_py = log_pz - logdet  # the density of y = logit(...) is p_z / |dy/dz|
    got = bpd(log_py, logdet, d, K)
    xs = np.asarray(x, np.float64).reshape(4000, -1)
    e_log = (xs + 1) * np.log(xs + 1) - (xs + 1) - np.where(xs > 0, xs * np.log(np.maximum(xs, 1)) - xs, 0.0)
    expected = -(np.log(2.0 / K) + e_log).sum(1) / (d * math.log(2)) + math.log2(K)
    diff = np.asarray(got, np.float64) - expected
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(diff.size) + 1e-4
    exact_nll = -np.log2((2 * xs + 1) / K**2).sum(1) / d
    assert np.all(expected >= exact_nll - 1e-9)
    # Log-Jacobian of the logit transform against autodiff.
    jac = jax.vmap(jax.grad(lambda v: jnp.sum(logit_transform(v[None], 0.05)[0])))(z[:3].reshape(3, -1))
    np.testing.assert_allclose(logdet[:3], jnp.sum(jnp.log(jac), axis=1), rtol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(form="sliced"), "form.*ism.*dsm"),
    (dict(probe="sphere"), "probe.*rademacher.*gaussian"),
    (dict(time_sampling="beta"), "time_sampling.*uniform.*importance"),
    (dict(divergence="approx"), "divergence.*hutchinson.*exact"),
    (dict(num_samples=0), "num_samples"),
])
def test_elbo_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        elbo(lambda y, t: -y, VPSDE(), jnp.ones((2, 3)), jax.random.PRNGKey(0), **kwargs)


def test_invalid_shapes():
    with pytest.raises(ValueError, match="x must have shape"):
        elbo(lambda y, t: -y, VPSDE(), jnp.ones((3,)), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="x must have shape"):
        ode_logp(lambda y, t: -y, VPSDE(), jnp.ones((3,)), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="divergence"):
        ode_logp(lambda y, t: -y, VPSDE(), jnp.ones((3, 2)), jax.random.PRNGKey(0), divergence="none")
    with pytest.raises(ValueError, match="shape"):
        elbo(lambda y, t: y[:, :1], VPSDE(), jnp.ones((3, 2)), jax.random.PRNGKey(0))


@pytest.mark.parametrize("num_samples", [1, 3])
def test_elbo_under_jit_equals_elbo_run_op_by_op(num_samples):
    """elbo compiled gives the values it gives op by op (same key), to float rounding.

    Guards how the draws are combined: jax.jit of jax.vmap over one draw (a batch axis of size 1) gave
    values off by hundreds of nats on XLA:CPU (jaxlib 0.10.2) for this mixture, while eager vmap was right."""
    sde = VPSDE()
    mix = random_mixture(jax.random.PRNGKey(0), 2, scale=1.0)
    x = mix.sample(jax.random.PRNGKey(10), 20_000)
    score = score_fn_for(mix, sde)
    rng = jax.random.PRNGKey(1)
    got = jax.jit(lambda x: elbo(score, sde, x, rng, num_samples=num_samples))(x)
    np.testing.assert_allclose(got, elbo(score, sde, x, rng, num_samples=num_samples), rtol=1e-4, atol=1e-3)
