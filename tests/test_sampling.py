"""Samplers against exact answers (Gaussian data, exact score), and the plots as files.

For Gaussian data N(m, C) under the VP SDE the marginal at t_min is N(alpha m, alpha^2 C + sigma^2 I) and
the score is linear in y, so:
- every lam-sampler with the exact score must hit those moments up to Monte Carlo error, the O(dt) error of
  Euler-Maruyama and the prior mismatch (q_T is not exactly N(0, I); the ODE carries that mismatch back,
  ~0.006 in the mean for this m);
- the Euler-Maruyama chain itself is linear-Gaussian, so its exact output moments follow from a closed
  recursion (`_chain_moments`), and the empirical moments must match those up to Monte Carlo error alone.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffvar.mixture import GaussianMixture, score_fn_for
from diffvar.plots import save_image_grid, save_scatter_2d, save_training_curves
from diffvar.sampling import lambda_drift, probability_flow_drift, sample_lambda, sample_ode, solve_adaptive
from diffvar.sde import VPSDE

SDE = VPSDE()
T_MIN = 1e-3
M = np.array([1.0, -0.5])
C = np.array([[1.0, 0.4], [0.4, 0.5]])
N = 20000
STEPS = 500
# Monte Carlo tolerance in standard errors, and the stated allowance for discretisation (Euler-Maruyama at
# 500 steps: <= 0.0013 in the mean, <= 0.0025 in the covariance, from _chain_moments) plus prior mismatch
# (<= 0.0056 in the mean, lam = 1 / ODE).
Z = 5.0
DISC_MEAN, DISC_COV = 0.01, 0.01


def _alpha_sigma2(t):
    b = SDE.int_beta(t)
    return math.exp(-0.5 * b), -math.expm1(-b)


def _target(t=T_MIN):
    a, s2 = _alpha_sigma2(t)
    return a * M, a * a * C + s2 * np.eye(2)


def gaussian_score(y, t):
    """Exact score of N(M, C) pushed through the VP SDE, closed-form 2x2 inverse (fast on CPU)."""
    alpha, sigma = SDE.alpha_sigma(t)
    a2, s2 = alpha**2, sigma**2
    p, q, r = a2 * C[0, 0] + s2, a2 * C[0, 1], a2 * C[1, 1] + s2
    det = p * r - q * q
    d0, d1 = y[:, 0] - alpha * M[0], y[:, 1] - alpha * M[1]
    return -jnp.stack([(r * d0 - q * d1) / det, (p * d1 - q * d0) / det], axis=1)


def _chain_moments(lam, steps, t_min=T_MIN):
    """Exact mean and covariance of sample_lambda's output (Euler-Maruyama on the linear-Gaussian problem)."""
    mu, S = np.zeros(2), np.eye(2)
    dt = (SDE.T - t_min) / steps
    for i in range(steps):
        t = SDE.T - i * dt
        a, s2 = _alpha_sigma2(t)
        beta = SDE.beta_min + t * (SDE.beta_max - SDE.beta_min)
        P = np.linalg.inv(a * a * C + s2 * np.eye(2))
        A = (1.0 + 0.5 * beta * dt) * np.eye(2) - (1.0 - lam / 2) * beta * dt * P
        mu = A @ mu + (1.0 - lam / 2) * beta * dt * P @ (a * M)
        S = A @ S @ A.T + ((1.0 - lam) * beta * dt * np.eye(2) if i < steps - 1 else 0.0)
    return mu, S


def _check_moments(x, mean, cov, extra_mean=0.0, extra_cov=0.0):
    """|empirical - expected| <= Z standard errors + extra, for the mean and each covariance entry."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    assert np.all(np.isfinite(x))
    emp_mean, emp_cov = x.mean(0), np.cov(x.T)
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    err_mean, err_cov = np.abs(emp_mean - mean), np.abs(emp_cov - cov)
    assert np.all(err_mean <= Z * se_mean + extra_mean), (emp_mean, mean, se_mean)
    assert np.all(err_cov <= Z * se_cov + extra_cov), (emp_cov, cov, se_cov)
    return err_mean.max(), err_cov.max()


def test_gaussian_score_matches_mixture_score():
    mix = GaussianMixture.create(jnp.ones(1), jnp.asarray(M[None], jnp.float32), jnp.asarray(C[None], jnp.float32))
    y = jax.random.normal(jax.random.PRNGKey(0), (64, 2)) * 2
    t = jax.random.uniform(jax.random.PRNGKey(1), (64,), minval=T_MIN, maxval=1.0)
    np.testing.assert_allclose(gaussian_score(y, t), score_fn_for(mix, SDE)(y, t), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_sample_lambda_gaussian_moments(lam):
    sample = jax.jit(lambda k: sample_lambda(gaussian_score, SDE, k, (N, 2), lam=lam, steps=STEPS, t_min=T_MIN))
    x = sample(jax.random.PRNGKey(10 + int(10 * lam)))
    # Against the true marginal at t_min: statistical + discretisation + prior-mismatch tolerance.
    _check_moments(x, *_target(), extra_mean=DISC_MEAN, extra_cov=DISC_COV)
    # Against the exact moments of the Euler-Maruyama chain: statistical tolerance only.
    _check_moments(x, *_chain_moments(lam, STEPS))


def test_chain_moments_converge_to_target():
    """The scheme (not just its implementation) is consistent: the chain's exact moments approach q_{t_min}."""
    mean, cov = _target()
    for lam in (0.0, 0.5, 1.0):
        mu, S = _chain_moments(lam, STEPS)
        assert np.abs(mu - mean).max() < DISC_MEAN and np.abs(S - cov).max() < DISC_COV


def test_sample_ode_gaussian_moments():
    x, nfe = jax.jit(lambda k: sample_ode(gaussian_score, SDE, k, (N, 2), t_min=T_MIN))(jax.random.PRNGKey(3))
    assert int(nfe) > 0
    # The exact flow map for Gaussian data is x = mu_min + K (y_T - mu_T), K = Sigma_min^1/2 Sigma_T^-1/2,
    # so with y_T ~ N(0, I): mean mu_min - K mu_T, covariance K K^T (the prior mismatch, exactly).
    mu_min, cov_min = _target()
    mu_T, cov_T = _target(SDE.T)
    w, V = np.linalg.eigh(cov_min)
    wT = np.linalg.eigvalsh(cov_T)  # cov_T = a_T^2 C + s_T^2 I shares C's eigenvectors with cov_min
    K = V @ np.diag(np.sqrt(w / wT)) @ V.T
    _check_moments(x, mu_min - K @ mu_T, K @ K.T)
    _check_moments(x, mu_min, cov_min, extra_mean=DISC_MEAN, extra_cov=DISC_COV)


def test_lambda_one_is_euler_for_the_ode_pathwise():
    """Same rng, same prior draw: sample_lambda(lam=1) (Euler) and sample_ode agree sample by sample."""
    rng = jax.random.PRNGKey(5)
    x_euler = sample_lambda(gaussian_score, SDE, rng, (256, 2), lam=1.0, steps=STEPS)
    x_ode, _ = sample_ode(gaussian_score, SDE, rng, (256, 2))
    assert np.max(np.abs(np.asarray(x_euler - x_ode))) < 0.02


def test_mixture_proportions():
    weights = jnp.array([0.3, 0.7])
    means = jnp.array([[-1.5, 1.0], [2.0, -0.5]])
    covs = jnp.stack([0.2 * jnp.eye(2), jnp.array([[0.3, 0.1], [0.1, 0.25]])])
    mix = GaussianMixture.create(weights, means, covs)
    score_fn = score_fn_for(mix, SDE)
    comps = [GaussianMixture.create(jnp.ones(1), means[k : k + 1], covs[k : k + 1]) for k in range(2)]
    n = 8000
    samplers = {
        "lam0": lambda k: sample_lambda(score_fn, SDE, k, (n, 2), lam=0.0, steps=200),
        "lam1": lambda k: sample_lambda(score_fn, SDE, k, (n, 2), lam=1.0, steps=200),
        "ode": lambda k: sample_ode(score_fn, SDE, k, (n, 2), rtol=1e-4, atol=1e-4)[0],
    }
    se = math.sqrt(0.3 * 0.7 / n)
    for i, (name, sampler) in enumerate(samplers.items()):
        x = jax.jit(sampler)(jax.random.PRNGKey(20 + i))
        assert np.all(np.isfinite(np.asarray(x))), name
        logits = jnp.stack([jnp.log(weights[k]) + comps[k].logp(x) for k in range(2)], axis=1)
        frac = float(jnp.mean(jnp.argmax(logits, axis=1) == 0))
        assert abs(frac - 0.3) <= Z * se + 0.01, (name, frac)


def test_image_shaped_samples():
    """Any trailing shape works; N(0, I) data is stationary under VP (score -y), so samples stay N(0, I)."""
    score_fn = lambda y, t: -y
    x = sample_lambda(score_fn, SDE, jax.random.PRNGKey(0), (64, 4, 4, 1), lam=0.5, steps=50)
    y, nfe = sample_ode(score_fn, SDE, jax.random.PRNGKey(0), (64, 4, 4, 1))
    for z in (x, y):
        assert z.shape == (64, 4, 4, 1) and np.all(np.isfinite(np.asarray(z)))
        assert abs(float(jnp.std(z)) - 1.0) < 0.1
    assert int(nfe) > 0


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan"), "0.5x"])
def test_invalid_lam(lam):
    with pytest.raises(ValueError, match=r"lam.*\[0, 1\]"):
        sample_lambda(gaussian_score, SDE, jax.random.PRNGKey(0), (4, 2), lam=lam, steps=10)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_invalid_steps(steps):
    with pytest.raises(ValueError, match=r"steps.*>= 1"):
        sample_lambda(gaussian_score, SDE, jax.random.PRNGKey(0), (4, 2), lam=0.0, steps=steps)


def test_invalid_t_min():
    with pytest.raises(ValueError, match="t_min"):
        sample_lambda(gaussian_score, SDE, jax.random.PRNGKey(0), (4, 2), t_min=1.0)
    with pytest.raises(ValueError, match="t_min"):
        sample_ode(gaussian_score, SDE, jax.random.PRNGKey(0), (4, 2), t_min=-0.1)


def test_drifts():
    """lambda_drift = f - (1 - lam/2) g^2 score; probability_flow_drift is lam = 1."""
    y = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    t = jnp.linspace(0.1, 1.0, 8)
    f, g2, score = SDE.drift(y, t), SDE.g2(t)[:, None], gaussian_score(y, t)
    for lam in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(
            lambda_drift(gaussian_score, SDE, y, t, lam), f - (1 - lam / 2) * g2 * score, rtol=1e-6, atol=1e-6
        )
    np.testing.assert_array_equal(
        probability_flow_drift(gaussian_score, SDE, y, t), lambda_drift(gaussian_score, SDE, y, t, 1.0)
    )


def test_solve_adaptive_exact_solution_and_nfe():
    """dy/ds = -y, dz/ds = s on a pytree state, forwards and backwards in s; nfe = 6 * steps + 1 (Tsit5, FSAL)."""
    field = lambda s, state: (-state[0], jnp.full_like(state[1], s))
    (y, z), nfe = solve_adaptive(field, (jnp.ones(3), jnp.zeros(())), 0.0, 1.0, 1e-8, 1e-8)
    np.testing.assert_allclose(y, math.exp(-1.0), rtol=1e-6)
    np.testing.assert_allclose(z, 0.5, rtol=1e-6)
    assert int(nfe) > 7 and (int(nfe) - 1) % 6 == 0
    (y0, _), _ = solve_adaptive(field, (y, z), 1.0, 0.0, 1e-8, 1e-8)
    np.testing.assert_allclose(y0, 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "tols, match", [(dict(rtol=0.0), "rtol"), (dict(atol=float("nan")), "atol"), (dict(rtol="1e-5"), "rtol")]
)
def test_invalid_tolerances(tols, match):
    with pytest.raises(ValueError, match=match + ".*must be a number > 0"):
        sample_ode(gaussian_score, SDE, jax.random.PRNGKey(0), (4, 2), **tols)


# ----------------------------------------------------------------------------------------------
# Plots.


def _png(path):
    with Image.open(path) as im:
        im.verify()
    im = Image.open(path)
    assert im.format == "PNG"
    return im


def _no_temp_files(directory):
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib Figures diffvar.plots renders, in order (each is still written to its file)."""
    from diffvar import plots

    drawn, save = [], plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: (drawn.append(fig), save(fig, path, **kw)))
    return drawn


def _lines(ax):
    """{label or index: (x, y)} of an Axes' lines, as float arrays."""
    return {
        line.get_label() if not line.get_label().startswith("_") else i: tuple(
            np.asarray(v, np.float64) for v in line.get_data()
        )
        for i, line in enumerate(ax.get_lines())
    }


def test_image_grid_gray(tmp_path):
    images = np.random.default_rng(0).uniform(size=(10, 8, 8, 1))
    path = tmp_path / "grid.png"
    save_image_grid(path, images, levels=17)
    im = _png(path)
    # 4 columns x 3 rows of 8x8 cells with 1 px padding, upscaled x4.
    assert im.size == ((4 * 9 + 1) * 4, (3 * 9 + 1) * 4) and im.mode == "L"
    arr = np.asarray(im)
    # Quantized to 17 levels: cell pixels take values round(255 k / 16).
    allowed = set(np.round(255.0 * np.arange(17) / 16).astype(int)) | {128}
    assert set(np.unique(arr).tolist()) <= allowed
    # Each cell shows its image (row-major), quantized, each pixel as a 4x4 block; the padding is mid-grey.
    cells = arr[::4, ::4]
    want = np.round(255.0 * np.minimum(np.floor(images[..., 0] * 17), 16) / 16)
    for i in range(10):
        r, c = divmod(i, 4)
        np.testing.assert_array_equal(cells[1 + 9 * r : 9 + 9 * r, 1 + 9 * c : 9 + 9 * c], want[i])
    assert (cells[0] == 128).all() and (cells[:, 0] == 128).all()
    assert (cells[19:, 19:] == 128).all()  # cells 10 and 11 of the third row are empty
    _no_temp_files(tmp_path)


def test_image_grid_rgb_overwrite(tmp_path):
    path = tmp_path / "sub" / "rgb.png"
    save_image_grid(path, np.zeros((4, 32, 32, 3)))
    save_image_grid(path, np.full((9, 32, 32, 3), 0.5))  # overwrites atomically
    im = _png(path)
    assert im.mode == "RGB" and im.size == ((3 * 33 + 1) * 2, (3 * 33 + 1) * 2)
    assert (np.asarray(im)[2:66, 2:66] == 128).all()  # round(0.5 * 255): the second call's images
    with pytest.raises(ValueError, match="images"):
        save_image_grid(path, np.zeros((4, 8, 8, 2)))


def test_scatter_with_density(tmp_path, figures):
    from matplotlib.image import AxesImage

    from diffvar.data.toy import gmm_logp, gmm_sample

    points = gmm_sample(np.random.default_rng(0), 2000)
    points[0] = np.nan
    path = tmp_path / "scatter.png"
    save_scatter_2d(path, points, logp_fn=gmm_logp, lim=6.0, title="gmm")
    _png(path)
    (ax,) = figures[0].axes
    assert ax.get_xlim() == (-6.0, 6.0) and ax.get_ylim() == (-6.0, 6.0)
    assert ax.get_title() == "gmm\n1999 samples (1 non-finite dropped)"
    (density,) = [a for a in ax.get_images() if isinstance(a, AxesImage)]
    grid = np.asarray(density.get_array())
    assert grid.shape == (200, 200) and tuple(density.get_extent()) == (-6.0, 6.0, -6.0, 6.0)
    xs = np.linspace(-6.0, 6.0, 200)
    xx, yy = np.meshgrid(xs, xs)
    want = np.exp(gmm_logp(np.stack([xx.ravel(), yy.ravel()], axis=1))).reshape(200, 200)
    np.testing.assert_allclose(grid, want, rtol=1e-6)  # the density exp(logp) on the window, rows = y
    scatters = [c for c in ax.collections if len(c.get_offsets()) == 1999]
    assert len(scatters) == 1
    np.testing.assert_array_equal(scatters[0].get_offsets(), points[1:])  # every finite sample, in order

    save_scatter_2d(tmp_path / "plain.png", points, max_points=500)
    _png(tmp_path / "plain.png")
    (ax,) = figures[1].axes
    assert not ax.get_images() and ax.get_title() == "1999 samples (1 non-finite dropped)"
    (scatter,) = ax.collections
    np.testing.assert_array_equal(scatter.get_offsets(), points[1:501])  # the first max_points
    lo, hi = np.percentile(points[1:], 0.5, axis=0), np.percentile(points[1:], 99.5, axis=0)
    assert ax.get_xlim()[0] < lo[0] and ax.get_xlim()[1] > hi[0] and ax.get_ylim()[0] < lo[1]
    _no_temp_files(tmp_path)


def test_training_curves(tmp_path, figures):
    metrics = tmp_path / "metrics.jsonl"
    lines = []
    for step in range(0, 1000, 50):
        rec = {"step": step, "loss": 5.0 / (1 + step / 100), "lr": 2e-4, "steps_per_sec": 12.5}
        if step % 200 == 0:
            rec.update(test_bpd=3.0 - step / 1000, test_bpd_stderr=0.02)
        lines.append(json.dumps(rec))
    lines.append("not json")
    lines.append('{"step": 1000, "loss": 0.4, "test_b')  # truncated last line
    metrics.write_text("\n".join(lines))
    path = tmp_path / "curves.png"
    save_training_curves(path, metrics)
    _png(path)
    ax_loss, ax_eval = figures[0].axes
    steps = np.arange(0, 1000, 50.0)
    (loss,) = _lines(ax_loss).values()
    np.testing.assert_array_equal(loss[0], steps)
    np.testing.assert_allclose(loss[1], 5.0 / (1 + steps / 100))
    assert (ax_loss.get_xlabel(), ax_loss.get_ylabel(), ax_loss.get_yscale()) == ("step", "training loss", "log")
    evals = _lines(ax_eval)
    assert list(evals) == ["test_bpd"]
    np.testing.assert_array_equal(evals["test_bpd"][0], [0, 200, 400, 600, 800])
    np.testing.assert_allclose(evals["test_bpd"][1], [3.0, 2.8, 2.6, 2.4, 2.2])
    (band,) = ax_eval.collections  # the +-2 s.e. band: its vertices span value -+ 0.04
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(2.2 - 0.04) and ys.max() == pytest.approx(3.0 + 0.04)
    assert (ax_eval.get_xlabel(), ax_eval.get_ylabel()) == ("step", "test bits/dim")
    assert ax_eval.get_title() == "test bpd (last: 2.2000 ± 0.0200)"

    toy = tmp_path / "toy.jsonl"
    toy.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"step": 0, "loss": -1.0},
                {"step": 100, "loss": -2.0, "test_nats": 2.9, "test_nats_stderr": 0.05},
                {"step": 200, "loss": -2.5, "test_elbo_nats": 2.8, "test_nats_stderr": 0.04},
            ]
        )
        + '\n{"step": 300, "lo'
    )
    save_training_curves(tmp_path / "toy.png", toy)
    _png(tmp_path / "toy.png")
    ax_loss, ax_eval = figures[1].axes
    (loss,) = _lines(ax_loss).values()
    np.testing.assert_array_equal(loss[1], [-1.0, -2.0, -2.5])
    assert ax_loss.get_yscale() == "linear"  # a negative loss: no log scale
    evals = _lines(ax_eval)
    assert {k: (list(x), list(y)) for k, (x, y) in evals.items()} == {
        "test_nats": ([100.0], [2.9]),
        "test_elbo_nats": ([200.0], [2.8]),
    }
    assert ax_eval.get_ylabel() == "test nats" and ax_eval.get_title() == "test metric"
    assert [t.get_text() for t in ax_eval.get_legend().get_texts()] == ["test_nats", "test_elbo_nats"]

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    save_training_curves(tmp_path / "empty.png", empty)
    _png(tmp_path / "empty.png")
    ax_loss, ax_eval = figures[2].axes
    assert not ax_loss.get_lines() and not ax_eval.get_lines()
    assert [t.get_text() for t in ax_loss.texts] == ["no loss logged"]
    assert [t.get_text() for t in ax_eval.texts] == ["no evaluations logged"]
    _no_temp_files(tmp_path)


def test_noise_schedule_figure(tmp_path, figures):
    """gamma(s) of the model's schedule and of its reference clock on (0, T] (left) and their importance densities
    gamma' / (gamma(T) - gamma(s_1)) (right, log scale), each labelled; a fixed SDE (its own reference) is drawn
    once. Any two SDEs with gamma and nll_weight will do."""
    from diffvar.plots import save_noise_schedule

    learned, fixed = VPSDE(beta_min=0.2, beta_max=15.0), VPSDE()
    save_noise_schedule(tmp_path / "schedule.png", learned, fixed, num=50)
    _png(tmp_path / "schedule.png")
    ax_gamma, ax_density = figures[0].axes
    s = np.linspace(1.0 / 50, 1.0, 50, dtype=np.float32)
    for (x, y), sde in zip(_lines(ax_gamma).values(), (learned, fixed)):
        np.testing.assert_allclose(x, s)
        np.testing.assert_allclose(y, np.asarray(sde.gamma(s)), rtol=1e-6)
    assert [label.split(" (")[0] for label in _lines(ax_gamma)] == ["model", "reference"]
    for (_, y), sde in zip(_lines(ax_density).values(), (learned, fixed)):
        gamma = np.asarray(sde.gamma(s), np.float64)
        np.testing.assert_allclose(y, np.asarray(sde.nll_weight(s)) / (gamma[-1] - gamma[0]), rtol=1e-5)
    assert list(_lines(ax_density)) == ["model", "reference"] and ax_density.get_yscale() == "log"
    assert ax_gamma.get_ylabel() == "gamma(s) = log(sigma^2 / alpha^2)" and ax_density.get_xlabel() == "s"
    save_noise_schedule(tmp_path / "fixed.png", fixed, fixed, num=50)
    assert [label.split(" (")[0] for label in _lines(figures[1].axes[0])] == ["model"]


def test_samples_are_a_scatter_over_the_density_or_a_grid(tmp_path, figures):
    from diffvar.data import DataInfo
    from diffvar.data.toy import gmm_logp
    from diffvar.plots import save_samples

    toy = DataInfo("gmm2d", (2,), None, 10, 10, exact_logp=gmm_logp)
    points = np.random.default_rng(0).normal(size=(64, 2))
    save_samples(toy, points, tmp_path / "toy.png", tmp_path / "toy.npz", title="step 5", lam=0.0, nfe=None)
    (ax,) = figures[0].axes
    assert len(ax.get_images()) == 1 and ax.get_title() == "step 5\n64 samples"
    with np.load(tmp_path / "toy.npz") as f:
        assert sorted(f.files) == ["lam", "samples"] and np.array_equal(f["samples"], points)
    digits = DataInfo("digits", (8, 8, 1), 17, 10, 10)
    save_samples(digits, np.zeros((4, 8, 8, 1)), tmp_path / "grid.png")
    assert len(figures) == 1 and _png(tmp_path / "grid.png").size == ((2 * 9 + 1) * 4, (2 * 9 + 1) * 4)
    _no_temp_files(tmp_path)
