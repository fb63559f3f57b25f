"""The ELBO (diffvar.elbo) against the exact Gaussian-mixture answers: both forms, every time proposal, other
SDEs, a shifted score's exact loss; and its variance-reduction schemes (stratified time across an example's
draws, several Hutchinson probes per time point, importance-sampled time for the ISM form).

With the exact score the ELBO equals log p(x) up to the prior mismatch (DESIGN §4), so every scheme's mean must
land there within its Monte-Carlo error.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffvar.elbo import StratifiedTime, elbo, elbo_draws
from diffvar.mixture import random_mixture, score_fn_for
from diffvar.sde import VESDE, VPSDE, ImportanceTime, SubVPSDE, UniformTime, time_proposal

# The ELBO with the exact score equals log p(x) up to the prior mismatch E[log pi(Y_T) - log p_T(Y_T)],
# which for these SDEs and mixtures is below PRIOR_TOL nats (checked in test_prior_gap_is_small).
PRIOR_TOL = 0.01
SDE = VPSDE()
MIX = random_mixture(jax.random.PRNGKey(16), 16)
SCORE = score_fn_for(MIX, SDE)

PROPOSALS = [
    UniformTime(),
    UniformTime(t_min=1e-3),
    ImportanceTime(sde=SDE, t_eps=1e-3),
    ImportanceTime(sde=SDE, t_eps=1e-3, truncated=True),
]


def _elbo_gap(sde, mix, num_x, repeats, shape=None, score_fn=None, seed=0, **kwargs):
    """Per-example ELBO(x) - log p(x) [num_x] (each averaged over `repeats` draws), x ~ mixture."""
    x = mix.sample(jax.random.PRNGKey(seed), num_x)
    score_fn = score_fn or score_fn_for(mix, sde)
    xs = x if shape is None else jnp.reshape(x, (num_x,) + shape)
    est = jax.jit(lambda xs, k: elbo(score_fn, sde, xs, k, draws=repeats, **kwargs))(xs, jax.random.PRNGKey(seed + 1))
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
    se = _assert_mean_close(
        _elbo_gap(sde, mix, 4000, 200, shape=(4, 4, 1), score_fn=score_fn_for(mix, sde), **kwargs), 0.0
    )
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
    run = lambda form, ts, k: np.asarray(
        jax.jit(lambda k: elbo(score, sde, x, k, draws=10, form=form, time_sampling=ts))(jax.random.PRNGKey(k))
    )
    ism = run("ism", "uniform", 0).reshape(-1, 2)
    dsm = run("dsm", "importance", 1).reshape(-1, 2)
    for j in range(2):
        diff = ism[:, j].mean() - dsm[:, j].mean()
        se = math.sqrt(ism[:, j].var() / len(ism) + dsm[:, j].var() / len(dsm))
        assert abs(diff) < 4 * se + 1e-3, (j, diff, se)
        assert se < 0.1


@pytest.mark.parametrize("q", PROPOSALS, ids=["uniform", "uniform_tmin", "importance", "importance_truncated"])
def test_quantile_is_the_inverse_cdf_that_sample_uses(q):
    key = jax.random.PRNGKey(3)
    u = jax.random.uniform(key, (2000,))
    np.testing.assert_allclose(q.quantile(u), q.sample(key, 2000), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("q", PROPOSALS[::2], ids=["uniform", "importance"])
def test_stratified_time_puts_row_i_in_its_stratum(q):
    n, strata = 4000, 5
    stratum = jnp.arange(n) % strata
    t = StratifiedTime(q, stratum, strata).sample(jax.random.PRNGKey(0), n)
    edges = q.quantile(jnp.linspace(0.0, 1.0, strata + 1))
    assert bool(jnp.all((t >= edges[stratum] * (1 - 1e-6)) & (t <= edges[stratum + 1] * (1 + 1e-6))))
    # within its stratum, t is q restricted there: its q-CDF is uniform on [j / n, (j + 1) / n)
    u = jnp.asarray(
        [
            float(np.mean(np.asarray(t[stratum == j]) < edges[j] + 0.5 * (edges[j + 1] - edges[j])))
            for j in range(strata)
        ]
    )
    assert bool(jnp.all((u > 0.0) & (u < 1.0)))
    np.testing.assert_allclose(StratifiedTime(q, stratum, strata).density(t), q.density(t))


# name -> elbo keywords (with draws, the draws of one unit).
SCHEMES = {
    "stratified": dict(draws=4, stratified=True),
    "probes": dict(draws=1, probes=4),
    "importance_ism": dict(draws=1, time_sampling="importance"),
    "importance_ism_stratified": dict(draws=4, stratified=True, time_sampling="importance"),
    "dsm_stratified": dict(draws=4, stratified=True, form="dsm", time_sampling="importance"),
}


@pytest.mark.parametrize("name", SCHEMES)
def test_variance_reduced_elbo_equals_log_density_with_the_exact_score(name):
    """Each scheme's mean over 1024 examples x 128 draws (in independent units of `draws`) is log p(x) within
    4.5 s.e. + PRIOR_TOL."""
    kw = dict(SCHEMES[name])
    draws = kw["draws"]
    x = MIX.sample(jax.random.PRNGKey(0), 1024)
    fn = jax.jit(lambda k: elbo(SCORE, SDE, x, k, **kw))
    units = np.stack([np.asarray(fn(jax.random.PRNGKey(100 + r)), np.float64) for r in range(128 // draws)])
    gap = units - np.asarray(MIX.logp(x), np.float64)[None]
    per_example = gap.mean(axis=0)  # examples are independent; the R units of each are too
    mean, se = per_example.mean(), per_example.std(ddof=1) / math.sqrt(per_example.size)
    assert se < 0.15, se  # power: a bias of 0.7 nats would fail
    assert abs(mean) < 4.5 * se + PRIOR_TOL, (name, mean, se)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(form="sliced"), "form.*ism.*dsm"),
        (dict(probe="sphere"), "probe.*rademacher.*gaussian"),
        (dict(time_sampling="beta"), "time_sampling.*uniform.*importance"),
        (dict(divergence="approx"), "divergence.*hutchinson.*exact"),
        (dict(draws=0), "draws=0 must be an integer >= 1"),
        (dict(probes=1.5), "probes=1.5 must be an integer"),
        (dict(stratified=1), "stratified=1 must be True or False"),
    ],
)
def test_elbo_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        elbo(lambda y, t: -y, VPSDE(), jnp.ones((2, 3)), jax.random.PRNGKey(0), **kwargs)


def test_invalid_shapes():
    with pytest.raises(ValueError, match="x must have shape"):
        elbo(lambda y, t: -y, VPSDE(), jnp.ones((3,)), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="shape"):
        elbo(lambda y, t: y[:, :1], VPSDE(), jnp.ones((3, 2)), jax.random.PRNGKey(0))


@pytest.mark.parametrize("draws", [1, 3])
def test_elbo_under_jit_equals_elbo_run_op_by_op(draws):
    """elbo compiled gives the values it gives op by op (same key), to float rounding.

    Guards how the draws are combined: jax.jit of jax.vmap over one draw (a batch axis of size 1) gave
    values off by hundreds of nats on XLA:CPU (jaxlib 0.10.2) for this mixture, while eager vmap was right."""
    sde = VPSDE()
    mix = random_mixture(jax.random.PRNGKey(0), 2, scale=1.0)
    x = mix.sample(jax.random.PRNGKey(10), 20_000)
    score = score_fn_for(mix, sde)
    rng = jax.random.PRNGKey(1)
    got = jax.jit(lambda x: elbo(score, sde, x, rng, draws=draws))(x)
    np.testing.assert_allclose(got, elbo(score, sde, x, rng, draws=draws), rtol=1e-4, atol=1e-3)


def test_elbo_draws_are_one_batch_whose_mean_is_elbo():
    """elbo_draws [draws, B]: the mean over draws is elbo (same key); draws = 1 is the one draw objectives' elbo
    loss takes (the same random numbers whatever the tiling)."""
    x = MIX.sample(jax.random.PRNGKey(0), 8)
    rng = jax.random.PRNGKey(3)
    d = elbo_draws(SCORE, SDE, x, rng, draws=4, stratified=True)
    assert d.shape == (4, 8)
    np.testing.assert_array_equal(jnp.mean(d, axis=0), elbo(SCORE, SDE, x, rng, draws=4, stratified=True))
    np.testing.assert_array_equal(elbo_draws(SCORE, SDE, x, rng)[0], elbo(SCORE, SDE, x, rng))


def test_time_proposal_on_a_truncated_interval():
    """sde.time_proposal with t_min > 0: uniform on [t_min, T]; importance truncated at t_min (no mass below)."""
    q = time_proposal("uniform", SDE, 1e-3, 0.01)
    assert isinstance(q, UniformTime) and q.t_min == 0.01
    q = time_proposal("importance", SDE, 1e-3, 0.01)
    assert isinstance(q, ImportanceTime) and q.truncated and q.t_eps == 0.01
    assert isinstance(time_proposal("importance", SDE, 1e-3), ImportanceTime)
