"""Forward SDEs and time proposals against exact answers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffvar.sde import VESDE, VPSDE, ImportanceTime, SubVPSDE, UniformTime, time_proposal

SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=5.0)]


def euler_maruyama(sde, x, t_end, rng, steps=1000):
    """Simulates dY = f dt + g dW from Y_0 = x up to t_end, [n, d]."""
    dt = t_end / steps

    def step(y, i):
        t = jnp.full((y.shape[0],), i * dt)
        noise = jax.random.normal(jax.random.fold_in(rng, i), y.shape)
        return y + sde.drift(y, t) * dt + sde.diffusion(t)[:, None] * jnp.sqrt(dt) * noise, None

    y, _ = jax.lax.scan(step, x, jnp.arange(steps))
    return y


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("t_end", [0.3, 1.0])
def test_marginal_matches_euler_maruyama(sde, t_end):
    n = 20000
    x = jnp.tile(jnp.array([[1.5, -0.5]]), (n, 1))
    y = euler_maruyama(sde, x, t_end, jax.random.PRNGKey(0))
    mean, sigma = sde.marginal(x[:1], jnp.array([t_end]))
    var = float(sigma[0] ** 2)
    emp_mean, emp_var = np.asarray(y.mean(0)), np.asarray(y.var(0))
    # Statistical error (4 s.e.) plus the O(dt) bias of Euler-Maruyama (stated: 1% relative).
    se_mean = np.sqrt(var / n)
    np.testing.assert_array_less(
        np.abs(emp_mean - np.asarray(mean[0])), 4 * se_mean + 0.01 * np.abs(np.asarray(mean[0])) + 1e-3
    )
    se_var = var * np.sqrt(2.0 / n)
    np.testing.assert_array_less(np.abs(emp_var - var), 4 * se_var + 0.01 * var)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_nll_weight_is_derivative_of_lambda(sde):
    """g^2 / sigma^2 = d/ds log(sigma^2 / alpha^2), and gamma_inv inverts gamma."""
    t = jnp.linspace(0.01, 1.0, 50)
    dgamma = jax.vmap(jax.grad(lambda s: sde.gamma(s[None])[0]))(t)
    np.testing.assert_allclose(dgamma, sde.nll_weight(t), rtol=2e-4)
    np.testing.assert_allclose(sde.gamma_inv(sde.gamma(t)), t, atol=1e-5)


def test_vp_prior_matches_marginal_at_T():
    sde = VPSDE()
    _, sigma = sde.alpha_sigma(jnp.array([1.0]))
    assert abs(float(sigma[0]) - 1.0) < 1e-4
    z = jnp.array([[0.3, -1.2]])
    expected = -0.5 * (0.09 + 1.44) - np.log(2 * np.pi)
    np.testing.assert_allclose(sde.prior_logp(z), [expected], rtol=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_importance_density_normalised_and_sampler_matches(sde):
    q = ImportanceTime(sde=sde, t_eps=1e-3)
    # The density is flat on [0, t_eps] and smooth above: integrate the two pieces separately.
    lo = jnp.linspace(0.0, 1e-3, 1001)
    hi = jnp.geomspace(1e-3, 1.0, 200001)
    total = jnp.trapezoid(q.density(lo), lo) + jnp.trapezoid(q.density(hi), hi)
    assert abs(float(total) - 1.0) < 1e-4
    # Empirical CDF of the sampler against the CDF obtained by integrating the density.
    n = 200000
    s = np.sort(np.asarray(q.sample(jax.random.PRNGKey(1), n)))
    assert s.min() >= 0.0 and s.max() <= 1.0
    grid = np.asarray(hi)
    cdf = float(jnp.trapezoid(q.density(lo), lo)) + np.concatenate(
        [[0.0], np.cumsum(0.5 * np.diff(grid) * (np.asarray(q.density(hi))[1:] + np.asarray(q.density(hi))[:-1]))]
    )
    checkpoints = np.linspace(0, len(grid) - 1, 40).astype(int)
    for i in checkpoints:
        p = min(cdf[i], 1.0)
        emp = np.searchsorted(s, grid[i], side="right") / n
        assert abs(emp - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-4, (grid[i], emp, p)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_truncated_importance_time(sde):
    """q(t) = g^2 / (sigma^2 Z) on [t_eps, T] integrates to 1, and samples follow its CDF
    (lambda(t) - lambda(t_eps)) / Z."""
    t_eps = 1e-3
    q = ImportanceTime(sde=sde, t_eps=t_eps, truncated=True)
    grid = jnp.exp(jnp.linspace(math.log(t_eps), math.log(sde.T), 20001))
    dens = np.asarray(q.density(grid), np.float64)
    g = np.asarray(grid, np.float64)
    assert abs(np.sum(0.5 * (dens[1:] + dens[:-1]) * np.diff(g)) - 1.0) < 2e-3
    n = 50_000
    t = np.sort(np.asarray(q.sample(jax.random.PRNGKey(0), n)))
    assert t.min() >= t_eps and t.max() <= sde.T
    cdf = np.asarray((sde.gamma(jnp.asarray(t)) - sde.gamma(jnp.array([t_eps]))) / q.Z, np.float64)
    ks = np.max(np.abs(cdf - np.arange(1, n + 1) / n))
    assert ks < 1.95 / math.sqrt(n)  # Kolmogorov-Smirnov at the 0.1% level
    # Zero below t_eps; above it the same shape as the untruncated proposal, renormalised.
    np.testing.assert_array_equal(q.density(jnp.array([0.0, 0.5e-3])), 0.0)
    full = ImportanceTime(sde=sde, t_eps=t_eps)
    above = jnp.maximum(grid, t_eps)  # float32 exp(log(t_eps)) can land just below t_eps
    np.testing.assert_allclose(q.density(above) * q.Z, full.density(above) * full.Z, rtol=1e-5)


def test_uniform_density_and_sampler():
    q = time_proposal("uniform", VPSDE(T=2.0))
    t = q.sample(jax.random.PRNGKey(0), 10000)
    assert float(t.min()) >= 0 and float(t.max()) <= 2.0
    np.testing.assert_allclose(q.density(t), 0.5)
    q = UniformTime(T=2.0, t_min=0.4)
    t = q.sample(jax.random.PRNGKey(0), 10000)
    assert float(t.min()) >= 0.4 and float(t.max()) <= 2.0
    np.testing.assert_allclose(q.density(t), 1.0 / 1.6)
    assert abs(float(t.mean()) - 1.2) < 4 * 1.6 / math.sqrt(12 * 10000)


def test_sde_is_jittable_argument():
    f = jax.jit(lambda sde, x, t: sde.marginal(x, t))
    for sde in SDES:
        mean, sigma = f(sde, jnp.ones((3, 4, 4, 1)), jnp.array([0.1, 0.5, 1.0]))
        assert mean.shape == (3, 4, 4, 1) and sigma.shape == (3,)
        assert sde.drift(jnp.ones((3, 4, 4, 1)), jnp.ones(3)).shape == (3, 4, 4, 1)
        assert sde.diffusion(jnp.ones(3)).shape == (3,)
        assert sde.prior_logp(jnp.ones((3, 4, 4, 1))).shape == (3,)
        assert sde.prior_sample(jax.random.PRNGKey(0), (3, 2)).shape == (3, 2)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VPSDE(beta_min=20.0, beta_max=0.1), "beta_min"),
        (lambda: VPSDE(beta_min=1.0, beta_max=1.0), "beta_min"),
        (lambda: VPSDE(T=-1.0), "T"),
        (lambda: SubVPSDE(beta_min=-0.1), "beta_min"),
        (lambda: VESDE(sigma_min=5.0, sigma_max=1.0), "sigma_min"),
        (lambda: VESDE(T=0.0), "T"),
        (lambda: time_proposal("lognormal", VPSDE()), "name=.lognormal.*uniform.*importance"),
        (lambda: ImportanceTime(sde=VPSDE(), t_eps=2.0), "t_eps"),
        (lambda: ImportanceTime(sde=VPSDE(), t_eps=1e-3, truncated="yes"), "truncated.*bool"),
        (lambda: UniformTime(T=1.0, t_min=1.0), r"t_min.*\[0, T=1.0\)"),
        (lambda: UniformTime(T=1.0, t_min=-0.1), "t_min"),
    ],
)
def test_invalid_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
