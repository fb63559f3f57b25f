"""The probability-flow ODE's log-likelihood (diffvar.ode) against the exact Gaussian-mixture log p(x): the exact
and the Hutchinson trace, one step size per batch or per example (the solve vmapped over the batch; the same
ODE to the same tolerance)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffvar.mixture import random_mixture, score_fn_for
from diffvar.ode import ode_logp, trace_estimator
from diffvar.sde import VPSDE
from tests.helpers import exact_prior


def exact_ode_logp(mix, sde, x, divergence, **kwargs):
    """ode_logp with the mixture's exact score and prior, solved to 1e-6: what must equal mix.logp(x)."""
    return ode_logp(
        score_fn_for(mix, sde),
        sde,
        x,
        jax.random.PRNGKey(0),
        rtol=1e-6,
        atol=1e-6,
        divergence=divergence,
        prior_logp=exact_prior(mix, sde),
        **kwargs,
    )


@pytest.mark.parametrize("dim, divergence", [(2, "exact"), (16, "exact")])
def test_ode_logp_with_exact_score_equals_log_density(dim, divergence):
    sde = VPSDE()
    mix = random_mixture(jax.random.PRNGKey(dim), dim)
    x = mix.sample(jax.random.PRNGKey(1), 64)
    logp, nfe = jax.jit(lambda x: exact_ode_logp(mix, sde, x, divergence))(x)
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
    logp, _ = ode_logp(
        score_fn_for(mix, sde),
        sde,
        xs,
        jax.random.PRNGKey(3),
        divergence="hutchinson",
        prior_logp=exact_prior(mix, sde),
    )
    est = np.asarray(logp).reshape(64, 4)
    se = est.std(0, ddof=1) / 8
    assert np.all(np.abs(est.mean(0) - np.asarray(mix.logp(x))) < 4 * se + 5e-3)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_per_example_step_size_gives_the_exact_density_and_the_batch_solve(divergence):
    sde, dim = VPSDE(), 16
    mix = random_mixture(jax.random.PRNGKey(dim), dim)
    x = jnp.reshape(mix.sample(jax.random.PRNGKey(1), 24), (24, 4, 4, 1))
    solve = lambda x, mode: exact_ode_logp(mix, sde, x, divergence, step_size=mode)
    per_example, nfe = jax.jit(lambda x: solve(x, "per_example"))(x)
    batch, _ = jax.jit(lambda x: solve(x, "batch"))(x)
    assert 20 < int(nfe) < 4096 * 6
    # the same probes in both: the two solve the same ODE, to the solver's tolerance
    np.testing.assert_allclose(per_example, batch, atol=2e-3 * math.sqrt(dim))
    if divergence == "exact":
        np.testing.assert_allclose(per_example, mix.logp(x.reshape(24, dim)), atol=2e-3 * math.sqrt(dim))


def test_per_example_step_size_of_one_example_is_the_batch_solve():
    """B = 1 takes the batch path (no size-1 vmap: ode.vmap_over_examples): identical numbers."""
    sde = VPSDE()
    mix = random_mixture(jax.random.PRNGKey(2), 2)
    x = mix.sample(jax.random.PRNGKey(1), 1)
    a = ode_logp(score_fn_for(mix, sde), sde, x, jax.random.PRNGKey(0), step_size="per_example")
    b = ode_logp(score_fn_for(mix, sde), sde, x, jax.random.PRNGKey(0))
    assert float(a[0][0]) == float(b[0][0]) and int(a[1]) == int(b[1])


def test_unknown_step_size_names_the_argument():
    sde = VPSDE()
    with pytest.raises(ValueError, match="step_size"):
        ode_logp(lambda y, t: -y, sde, jnp.zeros((2, 2)), jax.random.PRNGKey(0), step_size="adaptive")


def test_invalid_arguments_name_themselves():
    with pytest.raises(ValueError, match="x must have shape"):
        ode_logp(lambda y, t: -y, VPSDE(), jnp.ones((3,)), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="divergence"):
        ode_logp(lambda y, t: -y, VPSDE(), jnp.ones((3, 2)), jax.random.PRNGKey(0), divergence="none")
    with pytest.raises(ValueError, match="rtol=0 must be a number > 0"):
        ode_logp(lambda y, t: -y, VPSDE(), jnp.ones((3, 2)), jax.random.PRNGKey(0), rtol=0)


def test_auto_trace_is_exact_for_small_data_and_importance_weighting():
    assert trace_estimator("auto", 16) == "exact" and trace_estimator("auto", 64) == "hutchinson"
    assert trace_estimator("auto", 64, importance_samples=4) == "exact"
    assert trace_estimator("hutchinson", 2) == "hutchinson"
