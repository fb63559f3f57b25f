"""Gaussian mixtures: the closed-form ground truth for diffusion likelihoods (DESIGN.md section 4).

A mixture sum_k w_k N(m_k, C_k) pushed through a linear SDE stays a mixture:
    q_t = sum_k w_k N(alpha(t) m_k, alpha(t)^2 C_k + sigma(t)^2 I),
so its log density and score are exact at every t.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct



@struct.dataclass
class GaussianMixture:
    """weights [K], means [K, d], covs [K, d, d]; data points are [B, d]."""

    weights: jax.Array
    means: jax.Array
    covs: jax.Array

    @property
    def dim(self):
        return self.means.shape[-1]

    def _log_components(self, y, means, covs):
        """log w_k + log N(y; means_k, covs_k), [B, K]; means [B, K, d], covs [B, K, d, d]."""
        chol = jnp.linalg.cholesky(covs)
        diff = y[:, None, :] - means
        sol = jax.scipy.linalg.solve_triangular(chol, diff[..., None], lower=True)[..., 0]
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        return jnp.log(self.weights) - 0.5 * (jnp.sum(sol**2, -1) + logdet + self.dim * math.log(2 * math.pi))

    def _at(self, sde, t):
        """Means [B, K, d] and covariances [B, K, d, d] of the mixture's marginal at time t [B]."""
        alpha, sigma = sde.alpha_sigma(t)
        means = alpha[:, None, None] * self.means[None]
        covs = alpha[:, None, None, None] ** 2 * self.covs[None] + (sigma**2)[:, None, None, None] * jnp.eye(self.dim)
        return means, covs

    def logp(self, x):
        """log p_0(x), [B]."""
        b = x.shape[0]
        means = jnp.broadcast_to(self.means, (b,) + self.means.shape)
        covs = jnp.broadcast_to(self.covs, (b,) + self.covs.shape)
        return jax.nn.logsumexp(self._log_components(x, means, covs), axis=1)

    def marginal_logp(self, sde, y, t):
        """log q_t(y), [B]."""
        return jax.nn.logsumexp(self._log_components(y, *self._at(sde, t)), axis=1)

    def score(self, sde, y, t):
        """grad_y log q_t(y), [B, d]: sum_k r_k(y) C_k(t)^{-1} (mu_k(t) - y)."""
        means, covs = self._at(sde, t)
        resp = jax.nn.softmax(self._log_components(y, means, covs), axis=1)
        prec_diff = jnp.linalg.solve(covs, (means - y[:, None, :])[..., None])[..., 0]
        return jnp.sum(resp[..., None] * prec_diff, axis=1)

    def sample(self, rng, n):
        """n samples, [n, d]."""
        k_c, k_z = jax.random.split(rng)
        comp = jax.random.choice(k_c, self.weights.shape[0], (n,), p=self.weights)
        z = jax.random.normal(k_z, (n, self.dim))
        chol = jnp.linalg.cholesky(self.covs)[comp]
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol, z)


def score_fn_for(mixture, sde, shape=None):
    """score_fn(y, t) for likelihood code; `shape` reshapes flat [B, d] mixtures to [B, *shape] data."""
    def score_fn(y, t):
        flat = jnp.reshape(y, (y.shape[0], -1))
        return jnp.reshape(mixture.score(sde, flat, t), y.shape)
    return score_fn


def random_mixture(rng, dim, num_components=3, scale=2.0):
    """A well-conditioned random mixture in `dim` dimensions with full covariances."""
    k_w, k_m, k_c = jax.random.split(rng, 3)
    weights = jax.nn.softmax(jax.random.normal(k_w, (num_components,)))
    means = scale * jax.random.normal(k_m, (num_components, dim))
    a = jax.random.normal(k_c, (num_components, dim, dim)) / math.sqrt(dim)
    covs = 0.3 * jnp.einsum("kij,klj->kil", a, a) + 0.05 * jnp.eye(dim)
    return GaussianMixture(weights, means, covs)

