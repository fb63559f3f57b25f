"""Gaussian mixtures: the closed-form ground truth for diffusion likelihoods.

A mixture sum_k w_k N(m_k, C_k) pushed through a linear SDE stays a mixture:
    q_t = sum_k w_k N(alpha(t) m_k, alpha(t)^2 C_k + sigma(t)^2 I),
so its log density and score are exact at every t.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.typing import ArrayLike, DTypeLike

from diffvar.dequantization import normal_mass_log
from diffvar.sde import SDE


@struct.dataclass
class GaussianMixture:
    """weights [K], means [K, d], and covariances C_k = U_k diag(evals_k) U_k^T as evecs [K, d, d], evals [K, d].

    Build one with `GaussianMixture.create(weights, means, covs)`. Keeping the eigenbasis makes every marginal
    alpha^2 C_k + sigma^2 I = U_k diag(alpha^2 evals_k + sigma^2) U_k^T diagonal in it, so nothing factorises a
    matrix inside a traced loop (jaxlib's batched CPU LAPACK can deadlock inside lax.map / while loops).
    """

    weights: jax.Array
    means: jax.Array
    evecs: jax.Array
    evals: jax.Array

    @classmethod
    def create(
        cls, weights: ArrayLike, means: ArrayLike, covs: ArrayLike, dtype: DTypeLike = jnp.float32
    ) -> GaussianMixture:
        """From weights [K], means [K, d], covs [K, d, d] (eigendecomposed here, in float64 numpy), stored as dtype."""
        evals, evecs = np.linalg.eigh(np.asarray(covs, np.float64))
        if np.any(evals <= 0):
            raise ValueError(f"covs must be symmetric positive definite, got eigenvalues down to {evals.min()!r}")
        cast = lambda a: jnp.asarray(a, dtype)
        return cls(cast(weights), cast(means), cast(evecs), cast(evals))

    @classmethod
    def create_diagonal(
        cls, weights: ArrayLike, means: ArrayLike, variances: ArrayLike, dtype: DTypeLike = jnp.float32
    ) -> GaussianMixture:
        """From weights [K], means [K, d] and per-dimension variances [K, d] (C_k = diag(variances_k)); the
        eigenbasis is the identity exactly, as box_logp needs."""
        variances = np.asarray(variances, np.float64)
        if np.any(variances <= 0):
            raise ValueError(f"variances must be > 0, got down to {variances.min()!r}")
        evecs = np.broadcast_to(np.eye(variances.shape[-1]), variances.shape + variances.shape[-1:])
        cast = lambda a: jnp.asarray(a, dtype)
        return cls(cast(weights), cast(means), cast(evecs), cast(variances))

    def box_logp(self, lo: jax.Array, hi: jax.Array, sde: SDE | None = None, t: jax.Array | None = None) -> jax.Array:
        """log P(Y_t / alpha(t) in [lo, hi)) [B] for boxes lo, hi [B, d] (t = None: of Y_0, the data), for a
        mixture with diagonal covariances (create_diagonal; the diagonal of C_k is used, so a full covariance
        gives a wrong answer):
            log sum_k w_k prod_j [Phi((alpha hi_j - alpha m_kj) / s_kj) - Phi((alpha lo_j - alpha m_kj) / s_kj)],
        s_kj^2 = alpha^2 C_k,jj + sigma^2. With the boxes of a quantized variable (dequantization.bin_box) this is
        the exact discrete log P(x) (t = None) and its counterpart at t (truncated-normal dequantization)."""
        var = jnp.einsum("kdj,kj->kd", self.evecs**2, self.evals)[None]  # [1, K, d]
        if t is None:
            scale = jnp.ones(lo.shape[:1] + (1, 1), lo.dtype)
        else:
            alpha, sigma = sde.alpha_sigma(t)
            scale = alpha[:, None, None]
            var = scale**2 * var + (sigma**2)[:, None, None]
        sd = jnp.sqrt(var)
        a = scale * (lo[:, None, :] - self.means[None]) / sd
        b = scale * (hi[:, None, :] - self.means[None]) / sd
        return jax.nn.logsumexp(jnp.log(self.weights) + jnp.sum(normal_mass_log(a, b), axis=-1), axis=1)

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    def _coeffs(self, sde, t):
        """alpha(t) [B] and the marginal covariance eigenvalues alpha^2 evals + sigma^2, [B, K, d]."""
        alpha, sigma = sde.alpha_sigma(t)
        return alpha, alpha[:, None, None] ** 2 * self.evals[None] + (sigma**2)[:, None, None]

    def _parts(self, y, alpha, var):
        """Per-component log w_k N(y; alpha m_k, C_k(t)) [B, K] and C_k(t)^{-1} (alpha m_k - y) [B, K, d]."""
        diff = jnp.einsum("kji,bkj->bki", self.evecs, alpha[:, None, None] * self.means[None] - y[:, None, :])
        log_comp = jnp.log(self.weights) - 0.5 * (
            jnp.sum(diff**2 / var + jnp.log(var), axis=-1) + self.dim * math.log(2 * math.pi)
        )
        return log_comp, jnp.einsum("kij,bkj->bki", self.evecs, diff / var)

    def logp(self, x: jax.Array) -> jax.Array:
        """log p_0(x), [B]."""
        alpha = jnp.ones(x.shape[:1], self.evals.dtype)
        var = jnp.broadcast_to(self.evals, (x.shape[0],) + self.evals.shape)
        return jax.nn.logsumexp(self._parts(x, alpha, var)[0], axis=1)

    def marginal_logp(self, sde: SDE, y: jax.Array, t: jax.Array) -> jax.Array:
        """log q_t(y), [B]."""
        return jax.nn.logsumexp(self._parts(y, *self._coeffs(sde, t))[0], axis=1)

    def score(self, sde: SDE, y: jax.Array, t: jax.Array) -> jax.Array:
        """grad_y log q_t(y), [B, d]: sum_k r_k(y) C_k(t)^{-1} (alpha m_k - y)."""
        log_comp, prec_diff = self._parts(y, *self._coeffs(sde, t))
        return jnp.sum(jax.nn.softmax(log_comp, axis=1)[..., None] * prec_diff, axis=1)

    def sample(self, rng: jax.Array, n: int) -> jax.Array:
        """n samples, [n, d]."""
        k_c, k_z = jax.random.split(rng)
        comp = jax.random.choice(k_c, self.weights.shape[0], (n,), p=self.weights)
        z = jax.random.normal(k_z, (n, self.dim)) * jnp.sqrt(self.evals[comp])
        return self.means[comp] + jnp.einsum("nij,nj->ni", self.evecs[comp], z)


def score_fn_for(mixture: GaussianMixture, sde: SDE) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """score_fn(y [B, ...], t [B]) -> [B, ...] of the mixture's marginal at t; y is flattened to [B, d]."""

    def score_fn(y, t):
        flat = jnp.reshape(y, (y.shape[0], -1))
        return jnp.reshape(mixture.score(sde, flat, t), y.shape)

    return score_fn


def random_mixture(rng: jax.Array, dim: int, num_components: int = 3, scale: float = 2.0) -> GaussianMixture:
    """A well-conditioned random mixture in `dim` dimensions with full covariances."""
    k_w, k_m, k_c = jax.random.split(rng, 3)
    weights = jax.nn.softmax(jax.random.normal(k_w, (num_components,)))
    means = scale * jax.random.normal(k_m, (num_components, dim))
    a = jax.random.normal(k_c, (num_components, dim, dim)) / math.sqrt(dim)
    covs = 0.5 * jnp.einsum("kij,klj->kil", a, a) + 0.2 * jnp.eye(dim)
    return GaussianMixture.create(weights, means, covs)
