"""Toy 2-D densities, sampled deterministically from a seed (numpy only; float32 points [n, 2]).

- gmm2d:        8 equally weighted isotropic Gaussians (std 0.5) on a circle of radius 4; its
                exact log density is `gmm_logp` (numpy) / `gmm_logp_jax` (jnp, traceable).
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

TOY_DATASETS = ("gmm2d", "swissroll", "moons", "checkerboard")
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


def gmm_logp(x, weights=GMM2D_WEIGHTS, means=GMM2D_MEANS, covs=GMM2D_COVS):
    """log sum_k w_k N(x; m_k, C_k) in float64 numpy; x [B, d] -> [B] nats."""
    x = np.asarray(x, dtype=np.float64)
    chol = np.linalg.cholesky(covs)  # [K, d, d]
    diff = x[:, None, :] - means[None]  # [B, K, d]
    sol = np.linalg.solve(chol[None], diff[..., None])[..., 0]  # L^{-1} (x - m), [B, K, d]
    logdet = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)  # [K]
    d = x.shape[-1]
    comp = np.log(weights) - 0.5 * (np.sum(sol**2, -1) + logdet + d * math.log(2 * math.pi))
    top = comp.max(axis=1, keepdims=True)
    return (top + np.log(np.sum(np.exp(comp - top), axis=1, keepdims=True)))[:, 0]


def gmm_logp_jax(x, weights=GMM2D_WEIGHTS, means=GMM2D_MEANS, covs=GMM2D_COVS):
    """Same as `gmm_logp` in jnp (jit/grad-traceable, computed in x's float dtype); x [B, d] -> [B]."""
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    x = x.astype(dtype)
    weights, means, covs = (jnp.asarray(a, dtype) for a in (weights, means, covs))
    chol = jnp.linalg.cholesky(covs)
    diff = x[:, None, :] - means[None]
    sol = jax.scipy.linalg.solve_triangular(
        jnp.broadcast_to(chol, diff.shape[:2] + chol.shape[-2:]), diff[..., None], lower=True
    )[..., 0]
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    d = x.shape[-1]
    comp = jnp.log(weights) - 0.5 * (jnp.sum(sol**2, -1) + logdet + d * math.log(2 * math.pi))
    return jax.nn.logsumexp(comp, axis=1)


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
