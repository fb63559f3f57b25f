"""Toy 2-D densities, sampled deterministically from a seed (numpy; float32 points [n, 2]).

- gmm2d:        8 equally weighted isotropic Gaussians (std 0.5) on a circle of radius 4; its exact log
                density is diffvar.mixture's, as `gmm_logp_jax` (jnp, traceable) / `gmm_logp` (float64 numpy).
- swissroll:    (t cos t, t sin t) + N(0, 1) noise, t ~ U[1.5 pi, 4.5 pi], all divided by 5.
- moons:        scikit-learn's two moons with N(0, 0.1^2) noise, scaled by 2, shifted by (-1, -0.2).
- checkerboard: uniform on the 8 black squares of a 4x4 board covering [-4, 4]^2.

The last three follow FFJORD's `toy_data.py` conventions. Splits are finite datasets
(`NUM_TRAIN` / `NUM_TEST` points) drawn from fixed seeds, different for train and test.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffvar.mixture import GaussianMixture

TOY_DATASETS = ("gmm2d", "swissroll", "moons", "checkerboard")
VERSION = "1.0.0"  # of the samplers and split seeds below: bump when a change alters the points
NUM_TRAIN = 65536
NUM_TEST = 8192
SPLIT_SEEDS = {"train": 0, "test": 1}


def _readonly(a):
    a = np.asarray(a, dtype=np.float64)
    a.setflags(write=False)
    return a


_ANGLES = 2.0 * np.pi * np.arange(8) / 8
GMM2D_WEIGHTS = _readonly(np.full(8, 1.0 / 8))  # [K]
GMM2D_MEANS = _readonly(4.0 * np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1))  # [K, 2]
GMM2D_COVS = _readonly(np.broadcast_to(0.25 * np.eye(2), (8, 2, 2)))  # [K, 2, 2], std 0.5


def gmm2d_mixture(dtype=jnp.float32):
    """The gmm2d density as a diffvar.mixture.GaussianMixture stored in `dtype` (built per call, cheap)."""
    return GaussianMixture.create(GMM2D_WEIGHTS, GMM2D_MEANS, GMM2D_COVS, dtype=dtype)


@jax.jit
def gmm_logp_jax(x):
    """log p(x) of gmm2d, compiled (grad-traceable; in x's float dtype, float32 for integer x); x [B, 2] -> [B] nats."""
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    return gmm2d_mixture(dtype).logp(x.astype(dtype))


def gmm_logp(x):
    """The same log density in float64, as numpy (for plots and quadrature); x [B, 2] -> [B] nats."""
    with jax.enable_x64(True):
        return np.asarray(gmm_logp_jax(jnp.asarray(x, jnp.float64)))


def gmm_sample(rng: np.random.Generator, n, weights=GMM2D_WEIGHTS, means=GMM2D_MEANS, covs=GMM2D_COVS):
    """n points [n, d] (float64) from the mixture."""
    k = rng.choice(len(weights), size=n, p=weights)
    z = rng.standard_normal((n, means.shape[-1]))
    return means[k] + np.einsum("nij,nj->ni", np.linalg.cholesky(covs)[k], z)


def gmm_entropy(num_samples: int = 1 << 20, seed: int = 0):
    """Monte Carlo estimate of the gmm2d entropy -E[log p(x)] in nats, as (mean, standard error)."""
    logp = gmm_logp(gmm_sample(np.random.default_rng(seed), num_samples))
    return float(-logp.mean()), float(logp.std(ddof=1) / math.sqrt(num_samples))


def _swissroll(rng, n):
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + rng.standard_normal((n, 2))
    return x / 5.0


def _moons(rng, n):
    upper = rng.random(n) < 0.5
    theta = np.pi * rng.random(n)
    x = np.where(
        upper[:, None],
        np.stack([np.cos(theta), np.sin(theta)], axis=1),
        np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=1),
    )
    x = x + 0.1 * rng.standard_normal((n, 2))
    return 2.0 * x + np.array([-1.0, -0.2])


def _checkerboard(rng, n):
    x1 = 4.0 * rng.random(n) - 2.0
    x2 = rng.random(n) - 2.0 * rng.integers(0, 2, size=n) + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], axis=1)


_SAMPLERS = {"gmm2d": gmm_sample, "swissroll": _swissroll, "moons": _moons, "checkerboard": _checkerboard}


def sample(name: str, n: int, seed: int) -> np.ndarray:
    """n points [n, 2] float32 from toy density `name`; the same (name, n, seed) gives the same points."""
    if name not in _SAMPLERS:
        raise ValueError(f"unknown toy dataset {name!r}; allowed: {', '.join(TOY_DATASETS)}")
    return _SAMPLERS[name](np.random.default_rng(seed), n).astype(np.float32)


def load_split(name: str, split: str) -> np.ndarray:
    """The fixed finite dataset of `name` for split "train" ([NUM_TRAIN, 2]) or "test" ([NUM_TEST, 2])."""
    n = {"train": NUM_TRAIN, "test": NUM_TEST}[split]
    return sample(name, n, SPLIT_SEEDS[split])
