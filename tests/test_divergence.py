"""Divergences of per-example maps (diffvar.divergence): Hutchinson's estimator is unbiased for the exact trace,
with a fixed probe, and with several probes in one vmapped JVP."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffvar.divergence import draw_probe, per_example_sum, value_and_divergence
from diffvar.mixture import random_mixture, score_fn_for
from diffvar.sde import VPSDE

SDE = VPSDE()
MIX = random_mixture(jax.random.PRNGKey(16), 16)
SCORE = score_fn_for(MIX, SDE)


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


@pytest.mark.parametrize("probes", [2, 5])
def test_several_probes_under_jit_are_the_mean_of_single_probe_estimates(probes):
    """One linearisation and one vmapped JVP over the probes (jitted and op by op) = the mean of separate JVPs."""
    y = jax.random.normal(jax.random.PRNGKey(1), (6, 4, 4, 1))
    t = jnp.full((6,), 0.3)
    fn = lambda z: SCORE(z, t)
    rng = jax.random.PRNGKey(7)
    vs = draw_probe(rng, (probes,) + y.shape)
    single = [per_example_sum(v * jax.jvp(fn, (y,), (v,))[1]) for v in vs]
    expected = jnp.mean(jnp.stack(single), axis=0)
    many = lambda y, rng: value_and_divergence(fn, y, rng, probes=probes)
    for out, div in (many(y, rng), jax.jit(many)(y, rng)):
        np.testing.assert_allclose(div, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out, fn(y), rtol=1e-5, atol=1e-5)
