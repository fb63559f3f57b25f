"""The probability-flow ODE with one step size per example (the solve vmapped over the batch) against the
mixture's exact log p(x), and against the batch solve: the same ODE to the same tolerance."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffvar.likelihood import ode_logp
from diffvar.mixture import random_mixture, score_fn_for
from diffvar.sde import VPSDE


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_per_example_step_size_gives_the_exact_density_and_the_batch_solve(divergence):
    sde, dim = VPSDE(), 16
    mix = random_mixture(jax.random.PRNGKey(dim), dim)
    x = jnp.reshape(mix.sample(jax.random.PRNGKey(1), 24), (24, 4, 4, 1))
    exact_pT = lambda z: mix.marginal_logp(sde, z.reshape(z.shape[0], -1), jnp.full((z.shape[0],), sde.T))
    solve = lambda x, mode: ode_logp(score_fn_for(mix, sde), sde, x, jax.random.PRNGKey(0), rtol=1e-6, atol=1e-6,
                                     divergence=divergence, prior_logp=exact_pT, step_size=mode)
    per_example, nfe = jax.jit(lambda x: solve(x, "per_example"))(x)
    batch, _ = jax.jit(lambda x: solve(x, "batch"))(x)
    assert 20 < int(nfe) < 4096 * 6
    # the same probes in both: the two solve the same ODE, to the solver's tolerance
    np.testing.assert_allclose(per_example, batch, atol=2e-3 * math.sqrt(dim))
    if divergence == "exact":
        np.testing.assert_allclose(per_example, mix.logp(x.reshape(24, dim)), atol=2e-3 * math.sqrt(dim))


def test_per_example_step_size_of_one_example_is_the_batch_solve():
    """B = 1 takes the batch path (no size-1 vmap): identical numbers."""
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
