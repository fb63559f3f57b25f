"""The ELBO's variance-reduction schemes against ground truth: stratified time across an example's draws,
several Hutchinson probes per time point, importance-sampled time for the ISM form.

With the exact score of a 16-D Gaussian mixture the ELBO equals log p(x) up to the prior mismatch (DESIGN §4),
so every scheme's mean must land there within its Monte-Carlo error; and the standard errors the evaluator
reports (its unit is the mean of one example's draws in one pass, never a single stratified draw) must match
the spread of repeated evaluations.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from diffvar import config as config_lib
from diffvar.errors import ConfigError
from diffvar.evaluator import elbo_pass
from diffvar.likelihood import (StratifiedTime, draw_probe, elbo, elbo_mean_and_variance, per_example_sum,
                                time_proposal_on, value_and_divergence)
from diffvar.mixture import random_mixture, score_fn_for
from diffvar.sde import ImportanceTime, UniformTime, VPSDE

PRIOR_TOL = 0.01  # the ELBO's prior mismatch with the exact score, nats (tests/test_likelihood.py)
SDE = VPSDE()
MIX = random_mixture(jax.random.PRNGKey(16), 16)
SCORE = score_fn_for(MIX, SDE)
PROPOSALS = [UniformTime(), UniformTime(t_min=1e-3), ImportanceTime(sde=SDE, t_eps=1e-3),
             ImportanceTime(sde=SDE, t_eps=1e-3, truncated=True)]


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
    u = jnp.asarray([float(np.mean(np.asarray(t[stratum == j]) < edges[j] + 0.5 * (edges[j + 1] - edges[j])))
                     for j in range(strata)])
    assert bool(jnp.all((u > 0.0) & (u < 1.0)))
    np.testing.assert_allclose(StratifiedTime(q, stratum, strata).density(t), q.density(t))


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


# name -> elbo_mean_and_variance keywords (with num_draws); "plain" is the one-draw ISM form with uniform time.
SCHEMES = {
    "stratified": dict(num_draws=4, stratified=True),
    "stratified_lax_map": dict(num_draws=4, stratified=True, lax_map=True),  # elbo(num_samples=4) itself
    "probes": dict(num_draws=1, probes=4),
    "importance_ism": dict(num_draws=1, time_sampling="importance"),
    "importance_ism_stratified": dict(num_draws=4, stratified=True, time_sampling="importance"),
    "dsm_stratified": dict(num_draws=4, stratified=True, form="dsm", time_sampling="importance"),
}


@pytest.mark.parametrize("name", SCHEMES)
def test_variance_reduced_elbo_equals_log_density_with_the_exact_score(name):
    """Each scheme's mean over 1024 examples x 128 draws (in independent units of num_draws) is log p(x) within
    4.5 s.e. + PRIOR_TOL."""
    kw = dict(SCHEMES[name])
    draws = kw.pop("num_draws")
    x = MIX.sample(jax.random.PRNGKey(0), 1024)
    if kw.pop("lax_map", False):
        fn = jax.jit(lambda k: elbo(SCORE, SDE, x, k, num_samples=draws, **kw))
    else:
        fn = jax.jit(lambda k: elbo_mean_and_variance(SCORE, SDE, x, k, draws, **kw)[0])
    units = np.stack([np.asarray(fn(jax.random.PRNGKey(100 + r)), np.float64) for r in range(128 // draws)])
    gap = units - np.asarray(MIX.logp(x), np.float64)[None]
    per_example = gap.mean(axis=0)  # examples are independent; the R units of each are too
    mean, se = per_example.mean(), per_example.std(ddof=1) / math.sqrt(per_example.size)
    assert se < 0.15, se  # power: a bias of 0.7 nats would fail
    assert abs(mean) < 4.5 * se + PRIOR_TOL, (name, mean, se)


# A score that is not the data's: with it the integrand's mean varies with t, and stratifying 4 draws makes a
# unit's variance about a quarter of that of 4 iid draws (with the exact score strata change nothing).
HALF_SCORE = lambda y, t: 0.5 * SCORE(y, t)


def repeated_evaluations(fresh_examples, evaluations=120, n=64, repeats=2):
    """(means, reported s.e., reported MC s.e., the MC s.e. had the 4 strata been counted as iid draws) of
    `evaluations` runs of the evaluator's elbo_pass with stratified 4-draw units, each with its own key; on
    fresh examples each run, or on one fixed set."""
    units = jax.jit(lambda x, k: elbo_mean_and_variance(HALF_SCORE, SDE, x, k, 4, stratified=True))
    fn = lambda params, x, k: -units(x, k)[0]
    out = []
    for e in range(evaluations):
        x = MIX.sample(jax.random.PRNGKey(1000 + e if fresh_examples else 0), n)
        est = elbo_pass(fn, None, jax.random.PRNGKey(e), [(x, np.ones(n, bool))], repeats=repeats)
        naive = math.sqrt(float(jnp.mean(units(x, jax.random.PRNGKey(10**5 + e))[1])) / (n * repeats))
        out.append((est["mean"], est["stderr"], est["mc_stderr"], naive))
    return np.asarray(out).T


@pytest.mark.parametrize("fresh_examples", [True, False], ids=["stderr", "mc_stderr"])
def test_reported_stderr_matches_the_spread_of_repeated_evaluations(fresh_examples):
    """The spread of the means of 120 evaluations over the mean reported variance is chi2_119 / 119 when the
    reported s.e. is right: inside its 1e-4 and 1 - 1e-4 quantiles (widened by the reported variances' own
    Monte-Carlo error, 4 of their standard errors). Fresh examples: the total s.e.; one fixed set: the MC s.e.,
    where counting the strata as independent draws instead must fail (the test's power)."""
    means, se, mc_se, naive = repeated_evaluations(fresh_examples)
    m = means.size
    lo, hi = stats.chi2.ppf([1e-4, 1 - 1e-4], m - 1) / (m - 1)

    def inside(reported):
        ratio = means.var(ddof=1) / reported.mean()
        slack = 4 * reported.std(ddof=1) / math.sqrt(m) / reported.mean()
        return lo * (1 - slack) < ratio < hi * (1 + slack), (ratio, lo, hi, slack)

    ok, why = inside(se**2 if fresh_examples else mc_se**2)
    assert ok, why
    if not fresh_examples:
        assert not inside(naive**2)[0], inside(naive**2)[1]


@pytest.mark.parametrize("key, value", [("eval.draws", 0), ("eval.probes", 0), ("eval.stratified", 1)])
def test_bad_eval_draws_probes_and_stratified_name_the_key(key, value):
    c = config_lib.defaults()
    name = key.split(".")[1]
    c.eval = ml_collections.ConfigDict(dict(c.eval.to_dict(), **{name: value}))  # as a config.json may hold it
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_lib.validate(c)


def test_time_proposal_on_keeps_a_proposal_object():
    q = ImportanceTime(sde=SDE, t_eps=1e-3)
    assert time_proposal_on(q, SDE, 1e-3, 0.0) is q
