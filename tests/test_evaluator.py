"""The evaluator (diffvar.evaluator): how a split is batched, the standard errors a pass reports against the spread
of repeated evaluations (its unit is the mean of one example's draws in one pass, never a single stratified
draw), EvalSpec from a config, and an ODE solve that runs out of steps."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffvar import distributed, evaluator, experiment
from diffvar.data import toy
from diffvar.elbo import ElboOptions, elbo_draws
from diffvar.errors import SolverError
from diffvar.mixture import GaussianMixture, random_mixture, score_fn_for
from diffvar.ode import OdeOptions
from diffvar.passes import elbo_pass, ode_pass
from diffvar.sde import VPSDE
from tests.helpers import tiny_config

SDE = VPSDE()
MIX = random_mixture(jax.random.PRNGKey(16), 16)
SCORE = score_fn_for(MIX, SDE)


def test_evaluation_batches_split_the_examples_evenly():
    """The fewest batches of at most the configured size, equal in size, rounded up to the device count."""
    assert evaluator.batch_size(256, 0, 1, 297) == 149  # 2 batches (298 computed), not 2 x 256
    assert evaluator.batch_size(256, 0, 2, 297) == 150
    assert evaluator.batch_size(256, 0, 1, 512) == 256
    assert evaluator.batch_size(256, 100, 2, 297) == 100  # max_examples caps the pass
    assert evaluator.batch_size(8192, 1024, 1, 8192) == 1024
    assert evaluator.batch_size(256, 0, 4, 0) == 256  # split size unknown: the configured batch
    for n in range(1, 700, 7):
        b = evaluator.batch_size(256, 0, 2, n)
        assert b <= 256 + 1 and b % 2 == 0 and -(-n // b) == -(-n // 256), (n, b)


# A score that is not the data's: with it the integrand's mean varies with t, and stratifying 4 draws makes a
# unit's variance about a quarter of that of 4 iid draws (with the exact score strata change nothing).
HALF_SCORE = lambda y, t: 0.5 * SCORE(y, t)


def repeated_evaluations(fresh_examples, evaluations=120, n=64, repeats=2):
    """(means, reported s.e., reported MC s.e., the MC s.e. had the 4 strata been counted as iid draws) of
    `evaluations` runs of the evaluator's elbo_pass with stratified 4-draw units, each with its own key; on
    fresh examples each run, or on one fixed set."""
    draws = jax.jit(lambda x, k: elbo_draws(HALF_SCORE, SDE, x, k, draws=4, stratified=True))  # [4, n]
    units = lambda x, k: (jnp.mean(draws(x, k), 0), jnp.var(draws(x, k), 0, ddof=1) / 4)  # (unit, its variance)
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


def test_an_ode_solve_that_runs_out_of_steps_is_one_solver_error():
    """ode.ode_logp marks a solve past max_steps with NFE -1 (no host callback inside the program);
    passes.ode_pass turns it into a SolverError, the one line scripts/evaluate.py prints. (The gmm2d
    experiment with its data's exact score: the solve itself is well behaved.)"""
    exp = experiment.build(tiny_config())
    params = experiment.init_state(exp, 0).ema_params
    score = lambda p: score_fn_for(
        GaussianMixture.create(toy.GMM2D_WEIGHTS, toy.GMM2D_MEANS, toy.GMM2D_COVS), exp.schedule.reference
    )
    batches = evaluator.split_batches(exp, distributed.make_mesh(), "test", 64, 64)
    key = jax.random.PRNGKey(0)
    fn = evaluator.compile_ahead(
        experiment.make_ode_fn(exp, OdeOptions(max_steps=3), score=score), params, batches[0][0], key
    )[0]
    assert int(fn(params, batches[0][0], key)[1]) == -1
    with pytest.raises(SolverError, match="more than 3 steps"):
        ode_pass(fn, params, key, batches, max_steps=3)
    ok = evaluator.compile_ahead(experiment.make_ode_fn(exp, score=score), params, batches[0][0], key)[0]
    assert ode_pass(ok, params, key, batches)["nfe"] > 6 * 3 + 1


def test_eval_spec_takes_each_estimators_options_from_the_config():
    """The trainer's spec: eval.form alone, its options as config.eval holds them (draws 4, stratified), no ODE;
    overrides by config key name; DSM samples time by importance unless time_sampling is given."""
    c = tiny_config(**{"eval.draws": 3, "eval.ode_rtol": 1e-4})
    spec = evaluator.EvalSpec.from_config(c)
    assert spec.forms == ("ism",) and spec.ode is None and spec.seed == c.seed + 1
    assert spec.elbo == (ElboOptions(draws=3, stratified=True),)
    spec = evaluator.EvalSpec.from_config(c, forms=("ism", "dsm"), ode=True, probes=2, ode_atol=1e-3)
    assert [o.time_sampling for o in spec.elbo] == ["uniform", "importance"] and spec.elbo[1].probes == 2
    assert (spec.ode.rtol, spec.ode.atol, spec.ode.divergence) == (1e-4, 1e-3, "auto")
    spec = evaluator.EvalSpec.from_config(c, forms=("dsm",), time_sampling="uniform", seed=5, repeats=3)
    assert spec.elbo[0].time_sampling == "uniform" and (spec.seed, spec.repeats) == (5, 3)
    with pytest.raises(TypeError, match="num_draws"):
        evaluator.EvalSpec.from_config(c, num_draws=2)
