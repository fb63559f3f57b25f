"""Training objectives: gradients and values against the ELBO they claim to estimate.

All comparisons are statistical: a Monte-Carlo mean must land within 4 standard errors of its target (plus a
small stated tolerance for float32 round-off), and the standard errors come from the spread of independent
chunk means (or per-example values) of the very estimates compared.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from diffvar.elbo import ism_integrand
from diffvar.mixture import random_mixture, score_fn_for
from diffvar.models import MLP
from diffvar.objectives import OBJECTIVES, get_objective
from diffvar.sde import VESDE, VPSDE, SubVPSDE, UniformTime, bcast

T_EPS = 1e-3
MIX = random_mixture(jax.random.PRNGKey(0), 2, scale=1.0)


def toy_model(theta):
    """score(y, t) = -(theta_0 + theta_2 t) y + theta_1 tanh(y): its optimum depends on how times are weighted."""
    return lambda y, t: -(theta[0] + theta[2] * t[:, None]) * y + theta[1] * jnp.tanh(y)


THETA = jnp.array([0.7, 0.4, -0.5])


def neg_ism_elbo_on(sde, t_eps=T_EPS):
    """The reference: (T - t_eps) * ism_integrand at t ~ U[t_eps, T], exact divergence = -(ELBO on [t_eps, T])
    up to the theta-free prior term; built from elbo.ism_integrand, not from objectives' DSM losses."""

    def loss(score_fn, x, rng):
        k_t, k_y = jax.random.split(rng)
        t = UniformTime(T=sde.T, t_min=t_eps).sample(k_t, x.shape[0])
        y, _ = sde.perturb(k_y, x, t)
        return (sde.T - t_eps) * ism_integrand(score_fn, sde, y, t, divergence="exact")

    return loss


def chunk_grads(losses, make_score, params, x, rng, chunks):
    """For each loss, the gradient of its mean over each of `chunks` equal slices of x: {name: [chunks, P]}.

    Every loss sees the same x slices (paired), with independent rng streams per loss.
    """
    xs = x.reshape((chunks, -1) + x.shape[1:])
    flat, unravel = ravel_pytree(params)

    def one(xc, k):
        out = {}
        for i, (name, loss) in enumerate(sorted(losses.items())):
            g = jax.grad(lambda p: jnp.mean(loss(make_score(unravel(p)), xc, jax.random.fold_in(k, i))))(flat)
            out[name] = g
        return out

    return jax.jit(lambda xs, ks: jax.lax.map(lambda a: one(*a), (xs, ks)))(xs, jax.random.split(rng, chunks))


def mean_se(a):
    """Mean and standard error over the leading (chunk) axis."""
    a = np.asarray(a, np.float64)
    return a.mean(0), a.std(0, ddof=1) / math.sqrt(a.shape[0])


def assert_agree(a, b, label, tol_rel=2e-3):
    """Paired chunk estimates a, b [chunks, P] have equal means: |mean(a - b)| <= 4 SE(a - b) + tol_rel |mean(b)|."""
    diff, se = mean_se(a - b)
    ref = np.abs(mean_se(b)[0])
    z = np.abs(diff) / se
    assert np.all(np.abs(diff) <= 4 * se + tol_rel * ref), f"{label}: diff {diff}, se {se}, z {z}"
    return diff, se


# ------------------------------------------------------------------------------------------ the key gradient test


@pytest.fixture(scope="module")
def vp_toy_grads():
    sde = VPSDE()
    x = MIX.sample(jax.random.PRNGKey(1), 160_000)
    losses = {k: get_objective(k, sde, t_eps=T_EPS) for k in ("dsm_is", "dsm_lw", "dsm", "ssm")}
    losses = {"ism": neg_ism_elbo_on(sde), **losses}
    return chunk_grads(losses, toy_model, THETA, x, jax.random.PRNGKey(2), chunks=200)


def test_dsm_is_gradient_equals_elbo_gradient(vp_toy_grads):
    """E[grad dsm_is] = grad of -(ISM ELBO on [t_eps, T]); dsm_lw too (VP, toy 3-parameter model)."""
    g = vp_toy_grads
    assert_agree(g["dsm_is"], g["ism"], "dsm_is vs ISM ELBO")
    assert_agree(g["dsm_lw"], g["ism"], "dsm_lw vs ISM ELBO")


def test_eps_loss_gradient_is_not_the_elbo_gradient(vp_toy_grads):
    """The plain eps-loss (weight sigma^2 instead of g^2) is differently weighted: not the ELBO gradient, not even
    up to a scale. The same test machinery, which passes dsm_is, must reject it by many standard errors."""
    g = vp_toy_grads
    diff, se = mean_se(g["dsm"] - g["ism"])
    assert np.max(np.abs(diff) / se) > 50, (diff, se)
    # Direction: remove the best scalar multiple of the ELBO gradient; the residual must still be significant.
    a, b = np.asarray(g["dsm"], np.float64), np.asarray(g["ism"], np.float64)
    ga, gb = a.mean(0), b.mean(0)
    c = ga @ gb / (gb @ gb)
    resid = ga - c * gb  # orthogonal to gb, so first-order noise in c does not move its projection below
    u = resid / np.linalg.norm(resid)
    along, along_se = mean_se((a - c * b) @ u)
    assert along / along_se > 6, (resid, along, along_se)


def test_ssm_gradient_equals_eps_loss_gradient(vp_toy_grads):
    """Sliced SM and the sigma^2-weighted DSM (eps-loss) estimate the same Fisher divergence up to a theta-free
    constant, so their gradients agree in expectation."""
    g = vp_toy_grads
    assert_agree(g["ssm"], g["dsm"], "ssm vs dsm")


@pytest.mark.parametrize("sde", [SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=5.0)], ids=["subvp", "ve"])
def test_dsm_is_gradient_other_sdes(sde):
    x = MIX.sample(jax.random.PRNGKey(3), 40_000)
    losses = {
        "ism": neg_ism_elbo_on(sde),
        "dsm_is": get_objective("dsm_is", sde, t_eps=T_EPS),
        "dsm_lw": get_objective("dsm_lw", sde, t_eps=T_EPS),
    }
    g = chunk_grads(losses, toy_model, THETA, x, jax.random.PRNGKey(4), chunks=100)
    assert_agree(g["dsm_is"], g["ism"], f"{type(sde).__name__} dsm_is vs ISM ELBO")
    assert_agree(g["dsm_lw"], g["ism"], f"{type(sde).__name__} dsm_lw vs ISM ELBO")


def test_dsm_is_gradient_flax_mlp():
    """The same identity for a tiny flax MLP (score parameterisation), checked on 4 random projections of the
    ~400-dimensional gradient (so the 4-SE bound is not a 400-fold multiple test)."""
    sde = VPSDE()
    model = MLP(hidden=16, depth=2, activation="silu")
    params = model.init(jax.random.PRNGKey(5), jnp.zeros((1, 2)), jnp.zeros((1,)))
    x = MIX.sample(jax.random.PRNGKey(6), 40_000)
    losses = {"ism": neg_ism_elbo_on(sde), "dsm_is": get_objective("dsm_is", sde, t_eps=T_EPS)}
    make_score = lambda p: lambda y, t: model.apply(p, y, t)
    g = chunk_grads(losses, make_score, params, x, jax.random.PRNGKey(7), chunks=100)
    n = g["ism"].shape[1]
    proj = jax.random.normal(jax.random.PRNGKey(8), (n, 4)) / math.sqrt(n)
    a, b = g["dsm_is"] @ proj, g["ism"] @ proj
    assert_agree(a, b, "MLP dsm_is vs ISM ELBO (projected)")
    assert np.all(np.abs(mean_se(b)[0]) > 4 * mean_se(b)[1]), "projections must be nonzero for the test to bite"


# ------------------------------------------------------------------------------------------ values (exact score)


@pytest.fixture(scope="module")
def exact_values():
    sde = VPSDE()
    score = score_fn_for(MIX, sde)
    x = MIX.sample(jax.random.PRNGKey(10), 100_000)
    fns = {"ism": neg_ism_elbo_on(sde), **{k: get_objective(k, sde, t_eps=T_EPS) for k in ("dsm_is", "dsm_lw", "elbo")}}
    vals = {
        k: np.asarray(jax.jit(lambda x, r, f=f: f(score, x, r))(x, jax.random.PRNGKey(11 + i)), np.float64)
        for i, (k, f) in enumerate(sorted(fns.items()))
    }

    # With the exact score the bound on [t_eps, T] is tight for the marginal at t_eps:
    # int_{t_eps}^T E[ism_integrand] dt = E[log p_prior(Y_T)] - E[log q_{t_eps}(Y_{t_eps})] + KL(q_T || prior) (< 1e-3).
    @jax.jit
    def target(x, rng):
        k_eps, k_T = jax.random.split(rng)
        t_eps, t_T = jnp.full(x.shape[:1], T_EPS), jnp.full(x.shape[:1], sde.T)
        y_eps, _ = sde.perturb(k_eps, x, t_eps)
        y_T, _ = sde.perturb(k_T, x, t_T)
        return sde.prior_logp(y_T) - MIX.marginal_logp(sde, y_eps, t_eps)

    vals["target"] = np.asarray(target(x, jax.random.PRNGKey(20)), np.float64)
    return sde, x, vals


def _check_mean(values, target, label, tol=1e-3):
    m, se = values.mean(), values.std(ddof=1) / math.sqrt(values.size)
    assert abs(m - target) <= 4 * se + tol, f"{label}: mean {m}, target {target}, se {se}"


def test_dsm_is_value_is_the_elbo_on_t_eps_T(exact_values):
    """E[dsm_is] = E[(T - t_eps) ism_integrand(t ~ U[t_eps, T])] = -(ELBO on [t_eps, T]) without the prior term."""
    _, _, v = exact_values
    _check_mean(v["dsm_is"] - v["ism"], 0.0, "dsm_is - ISM")  # paired on x
    # ... and both equal the exact answer for the exact score (the marginal entropy change over [t_eps, T]).
    _check_mean(v["dsm_is"] - v["target"], 0.0, "dsm_is - exact")
    _check_mean(v["ism"] - v["target"], 0.0, "ISM - exact")


def test_dsm_lw_value_is_dsm_is_plus_constant(exact_values):
    """E[dsm_lw] - E[dsm_is] = int_{t_eps}^T (g^2 d / (2 sigma^2) + div f) dt
    = d Z / 2 + d log(alpha(T) / alpha(t_eps))."""
    sde, x, v = exact_values
    d = x.shape[1]
    ends = jnp.array([T_EPS, sde.T])
    gamma, log_alpha = sde.gamma(ends), sde.log_alpha(ends)
    const = float(0.5 * d * (gamma[1] - gamma[0]) + d * (log_alpha[1] - log_alpha[0]))
    _check_mean(v["dsm_lw"] - v["dsm_is"], const, "dsm_lw - dsm_is")


def test_elbo_loss_is_negative_log_likelihood_for_exact_score(exact_values):
    """With the exact score the ELBO is tight (prior gap < 1e-3 nats for VP): E[elbo loss] = -log p(x)."""
    _, x, v = exact_values
    _check_mean(v["elbo"] + np.asarray(MIX.logp(x), np.float64), 0.0, "elbo loss + log p(x)", tol=2e-3)


# ------------------------------------------------------------------------------------------ shapes, errors


@pytest.mark.parametrize("shape", [(2,), (4, 4, 1)])
@pytest.mark.parametrize("name", OBJECTIVES)
def test_shapes(name, shape):
    sde = VPSDE()
    x = jax.random.normal(jax.random.PRNGKey(0), (5,) + shape)
    loss_fn = get_objective(name, sde)

    def score_fn(p, y, t):
        return -p[0] * y + p[1] * jnp.tanh(y) * bcast(t, y)

    def mean_loss(p, rng):
        per_example = loss_fn(lambda y, t: score_fn(p, y, t), x, rng)
        return jnp.mean(per_example), per_example

    value_and_grad = jax.jit(jax.value_and_grad(mean_loss, has_aux=True))
    p = jnp.array([1.0, 0.5])
    (_, out), grads = value_and_grad(p, jax.random.PRNGKey(2))
    assert out.shape == (5,) and bool(jnp.all(jnp.isfinite(out)))
    assert grads.shape == (2,) and bool(jnp.all(jnp.isfinite(grads))) and bool(jnp.any(grads != 0))
    # deterministic in rng, and a different rng gives a different draw
    np.testing.assert_array_equal(out, value_and_grad(p, jax.random.PRNGKey(2))[0][1])
    assert not np.allclose(out, value_and_grad(p, jax.random.PRNGKey(3))[0][1])


def test_unknown_name_and_bad_options():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"name='sliced' is not allowed.*dsm_is"):
        get_objective("sliced", sde)
    with pytest.raises(ValueError, match=r"probe='uniform' is not allowed"):
        get_objective("ssm", sde, probe="uniform")
    with pytest.raises(ValueError, match=r"t_eps must be in \(0, T=1.0\)"):
        get_objective("dsm_is", sde, t_eps=0.0)
    with pytest.raises(ValueError, match="shape"):
        get_objective("dsm", sde)(lambda y, t: y, jnp.zeros((3,)), jax.random.PRNGKey(0))
