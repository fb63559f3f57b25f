"""Forward (inference) SDEs with Gaussian marginals, and time proposals.

Every SDE here is linear: dY = f(s) Y ds + g(s) dW with Y_s | x ~ N(alpha(s) x, sigma(s)^2 I).
Each is a frozen dataclass and a pytree (its hyperparameters are static), with pure jnp methods.
Shapes: `y` is [B, ...] (batch first, any trailing shape), `t` is [B].

gamma(s) = log(sigma(s)^2 / alpha(s)^2) is the log noise-to-signal ratio (VDM's gamma, minus the log-SNR);
g(s)^2 / sigma(s)^2 = d gamma / ds for every linear SDE, which is why the importance proposal is uniform in
gamma.
"""

from __future__ import annotations

import abc
import math

import jax
import jax.numpy as jnp
from flax import struct

_LOG_2PI = math.log(2.0 * math.pi)


def bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcasts a per-example [B] array against x of shape [B, ...]."""
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def _check_positive(name, value):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


class SDE(abc.ABC):
    """A linear forward SDE dY = drift_coef(s) Y ds + g(s) dW on [0, T] with Y_0 = x.

    Subclasses define the abstract coefficients below and prior_std; the rest follows from them.
    """

    T: float
    prior_std: float

    @abc.abstractmethod
    def drift_coef(self, t: jax.Array) -> jax.Array:
        """f(y, t) / y, [B]."""

    @abc.abstractmethod
    def g2(self, t: jax.Array) -> jax.Array:
        """g(t)^2, [B]."""

    @abc.abstractmethod
    def log_alpha(self, t: jax.Array) -> jax.Array:
        """log alpha(t), [B]: the mean of Y_t | x is alpha(t) x."""

    @abc.abstractmethod
    def sigma2(self, t: jax.Array) -> jax.Array:
        """sigma(t)^2, [B]: the variance of Y_t | x per dimension."""

    @abc.abstractmethod
    def gamma(self, t: jax.Array) -> jax.Array:
        """gamma(t) = log(sigma(t)^2 / alpha(t)^2), [B], increasing in t."""

    @abc.abstractmethod
    def gamma_inv(self, gamma: jax.Array) -> jax.Array:
        """The time t with gamma(t) = gamma, [B]."""

    def network_time(self, t: jax.Array) -> jax.Array:
        """The noise level the network is conditioned on at time t, [B]: t itself for a fixed schedule."""
        return t

    def truncation_time(self, t: float) -> float | jax.Array:
        """The time at which this SDE has the gamma its reference schedule has at time t (a float): t itself for
        a fixed schedule. Every truncation (the losses' t_eps, the ELBO's t_min and its DSM/ISM switch, the
        truncated normal's time, the samplers' and the ODE's stop) is named by a reference time and sits at a
        fixed gamma through this map, so a learned schedule's interior cannot move it."""
        return t

    def drift(self, y: jax.Array, t: jax.Array) -> jax.Array:
        """f(y, t) = drift_coef(t) y, shape of y."""
        return bcast(self.drift_coef(t), y) * y

    def div_drift(self, t: jax.Array, d: int) -> jax.Array:
        """div_y f(y, t) = d * drift_coef(t), shape [B] (d = number of dimensions)."""
        return d * self.drift_coef(t)

    def diffusion(self, t: jax.Array) -> jax.Array:
        """g(t), shape [B]."""
        return jnp.sqrt(self.g2(t))

    def alpha_sigma(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(alpha(t), sigma(t)), each [B]."""
        return jnp.exp(self.log_alpha(t)), jnp.sqrt(self.sigma2(t))

    def marginal(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean alpha(t) x (shape of x) and std sigma(t) ([B]) of Y_t | Y_0 = x."""
        alpha, sigma = self.alpha_sigma(t)
        return bcast(alpha, x) * x, sigma

    def perturb(self, rng: jax.Array, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(y, eps): y = alpha(t) x + sigma(t) eps, eps ~ N(0, I), a draw of Y_t | Y_0 = x; both shape of x."""
        eps = jax.random.normal(rng, x.shape, x.dtype)
        mean, sigma = self.marginal(x, t)
        return mean + bcast(sigma, x) * eps, eps

    def prior_logp(self, z: jax.Array) -> jax.Array:
        """log N(z; 0, prior_std^2 I) summed over trailing dims, [B]."""
        d = math.prod(z.shape[1:])
        s = self.prior_std
        sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=1)
        return -0.5 * sq / s**2 - d * (0.5 * _LOG_2PI + math.log(s))

    def prior_sample(self, rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """z ~ N(0, prior_std^2 I) of `shape`."""
        return self.prior_std * jax.random.normal(rng, shape)

    def nll_weight(self, t: jax.Array) -> jax.Array:
        """g(t)^2 / sigma(t)^2 = d gamma / dt, [B]: the weight that turns the eps-loss into likelihood weighting."""
        return self.g2(t) / self.sigma2(t)


class VPSDEBase(SDE):
    """A variance-preserving SDE given by its schedule beta(s) and B(s) = int_0^s beta: alpha^2 = exp(-B),
    sigma^2 = 1 - exp(-B), f = -beta y / 2, g^2 = beta, gamma = log(expm1(B)). Subclasses define beta, int_beta
    (B) and int_beta_inv (B^-1)."""

    prior_std = 1.0

    @abc.abstractmethod
    def beta(self, t: jax.Array) -> jax.Array:
        """beta(t), [B]."""

    @abc.abstractmethod
    def int_beta(self, t: jax.Array) -> jax.Array:
        """B(t) = int_0^t beta, [B]."""

    @abc.abstractmethod
    def int_beta_inv(self, b: jax.Array) -> jax.Array:
        """The t >= 0 with B(t) = b, [B]."""

    def drift_coef(self, t: jax.Array) -> jax.Array:
        return -0.5 * self.beta(t)

    def g2(self, t: jax.Array) -> jax.Array:
        return self.beta(t)

    def log_alpha(self, t: jax.Array) -> jax.Array:
        return -0.5 * self.int_beta(t)

    def sigma2(self, t: jax.Array) -> jax.Array:
        return -jnp.expm1(-self.int_beta(t))

    def gamma(self, t: jax.Array) -> jax.Array:
        """log(sigma^2 / alpha^2) = log(exp(B) - 1)."""
        return jnp.log(jnp.expm1(self.int_beta(t)))

    def gamma_inv(self, gamma: jax.Array) -> jax.Array:
        return self.int_beta_inv(jnp.logaddexp(gamma, 0.0))


@struct.dataclass
class VPSDE(VPSDEBase):
    """Variance-preserving SDE, beta(s) = b0 + s (b1 - b0) on s in [0, T]."""

    beta_min: float = struct.field(pytree_node=False, default=0.1)
    beta_max: float = struct.field(pytree_node=False, default=20.0)
    T: float = struct.field(pytree_node=False, default=1.0)

    def __post_init__(self):
        _check_positive("beta_min", self.beta_min)
        _check_positive("beta_max", self.beta_max)
        _check_positive("T", self.T)
        if self.beta_min >= self.beta_max:
            raise ValueError(f"beta_min must be < beta_max, got beta_min={self.beta_min}, beta_max={self.beta_max}")

    def beta(self, t: jax.Array) -> jax.Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def int_beta(self, t: jax.Array) -> jax.Array:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def int_beta_inv(self, b: jax.Array) -> jax.Array:
        """Solves B(t) = b for t >= 0."""
        db = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * db * b))


@struct.dataclass
class SubVPSDE(VPSDE):
    """sub-VP SDE: VP drift, g^2 = beta (1 - exp(-2 B)), sigma = 1 - exp(-B)."""

    def g2(self, t: jax.Array) -> jax.Array:
        return self.beta(t) * -jnp.expm1(-2.0 * self.int_beta(t))

    def sigma2(self, t: jax.Array) -> jax.Array:
        return jnp.expm1(-self.int_beta(t)) ** 2

    def gamma(self, t: jax.Array) -> jax.Array:
        """log(sigma^2 / alpha^2) = log(4 sinh(B/2)^2)."""
        return 2.0 * jnp.log(2.0 * jnp.sinh(0.5 * self.int_beta(t)))

    def gamma_inv(self, gamma: jax.Array) -> jax.Array:
        return self.int_beta_inv(2.0 * jnp.arcsinh(0.5 * jnp.exp(0.5 * gamma)))


@struct.dataclass
class VESDE(SDE):
    """Variance-exploding SDE: S(s) = smin (smax/smin)^(s/T), g^2 = d S^2/ds, sigma^2 = S^2 - smin^2."""

    sigma_min: float = struct.field(pytree_node=False, default=0.01)
    sigma_max: float = struct.field(pytree_node=False, default=50.0)
    T: float = struct.field(pytree_node=False, default=1.0)

    def __post_init__(self):
        _check_positive("sigma_min", self.sigma_min)
        _check_positive("sigma_max", self.sigma_max)
        _check_positive("T", self.T)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"sigma_min must be < sigma_max, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
            )

    @property
    def prior_std(self):
        return self.sigma_max

    @property
    def _log_ratio(self):
        return math.log(self.sigma_max / self.sigma_min)

    def _S2(self, t: jax.Array) -> jax.Array:
        return self.sigma_min**2 * jnp.exp(2.0 * self._log_ratio * t / self.T)

    def drift_coef(self, t: jax.Array) -> jax.Array:
        return jnp.zeros_like(t)

    def g2(self, t: jax.Array) -> jax.Array:
        return self._S2(t) * 2.0 * self._log_ratio / self.T

    def log_alpha(self, t: jax.Array) -> jax.Array:
        return jnp.zeros_like(t)

    def sigma2(self, t: jax.Array) -> jax.Array:
        return self.sigma_min**2 * jnp.expm1(2.0 * self._log_ratio * t / self.T)

    def gamma(self, t: jax.Array) -> jax.Array:
        """log sigma^2 (alpha = 1)."""
        return jnp.log(self.sigma2(t))

    def gamma_inv(self, gamma: jax.Array) -> jax.Array:
        return self.T * jnp.log1p(jnp.exp(gamma) / self.sigma_min**2) / (2.0 * self._log_ratio)


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


# ----------------------------------------------------------------------------------------------
# Time proposals q(s) on [0, T] or a sub-interval [t_min, T]: sample(rng, n) -> [n], density(t) -> [n], and the
# inverse CDF quantile(u) -> [n] (stratified draws, elbo.StratifiedTime).

TIME_SAMPLINGS = ("uniform", "importance")


@struct.dataclass
class UniformTime:
    """q(s) = 1 / (T - t_min) on [t_min, T] (t_min = 0: the whole interval); t_min a float or, for a learned
    schedule's truncation (SDE.truncation_time), a scalar array."""

    T: float = struct.field(pytree_node=False, default=1.0)
    t_min: float = struct.field(pytree_node=False, default=0.0)

    def __post_init__(self):
        traced = isinstance(self.t_min, jax.Array) and self.t_min.ndim == 0
        if not (traced or isinstance(self.t_min, (int, float)) and 0.0 <= self.t_min < self.T):
            raise ValueError(f"t_min must be a number in [0, T={self.T}), got {self.t_min!r}")

    def sample(self, rng: jax.Array, n: int) -> jax.Array:
        return jax.random.uniform(rng, (n,), minval=self.t_min, maxval=self.T)

    def quantile(self, u: jax.Array) -> jax.Array:
        """The time with CDF u, [n]: t_min + u (T - t_min)."""
        return self.t_min + u * (self.T - self.t_min)

    def density(self, t: jax.Array) -> jax.Array:
        return jnp.full_like(t, 1.0 / (self.T - self.t_min))


@struct.dataclass
class ImportanceTime:
    """q(s) proportional to w(s) = g(s)^2 / sigma(s)^2 = d gamma/ds on [t_lo, T]; below t_lo it is flat at
    w(t_lo) (truncated=False, for evaluation on [0, T]) or zero (truncated=True, for losses on [t_lo, T]).
    t_lo = sde.truncation_time(t_eps): t_eps for a fixed schedule, the time of the reference's gamma(t_eps) for
    a learned one (so truncated, q is uniform in gamma on the fixed [gamma_ref(t_eps), gamma(T)]).

    Normaliser Z = m + gamma(T) - gamma(t_lo), with mass m = t_lo w(t_lo) below t_lo (0 if truncated).
    Sampled by the exact inverse CDF: gamma is monotone, the CDF above t_lo is (m + gamma(s) - gamma(t_lo)) / Z.
    """

    sde: object = struct.field(pytree_node=False)
    t_eps: float = struct.field(pytree_node=False, default=1e-3)
    truncated: bool = struct.field(pytree_node=False, default=False)

    def __post_init__(self):
        if not (0.0 < self.t_eps < self.sde.T):
            raise ValueError(f"t_eps must be in (0, T={self.sde.T}), got {self.t_eps!r}")
        if not isinstance(self.truncated, bool):
            raise ValueError(f"truncated must be a bool, got {self.truncated!r}")

    @property
    def t_lo(self):
        """The truncation time sde.truncation_time(t_eps): a float, or a scalar array for a learned schedule."""
        return self.sde.truncation_time(self.t_eps)

    def _parts(self):
        """(w(t_lo), gamma(t_lo), mass below t_lo, Z), scalars."""
        t_lo = self.t_lo
        ends = jnp.stack([jnp.asarray(t_lo, jnp.float32), jnp.asarray(self.sde.T, jnp.float32)])
        gamma = self.sde.gamma(ends)
        w_eps = self.sde.nll_weight(ends[:1])[0]
        flat_mass = 0.0 if self.truncated else t_lo * w_eps
        return w_eps, gamma[0], flat_mass, flat_mass + gamma[1] - gamma[0]

    @property
    def Z(self):
        """The normaliser, a scalar."""
        return self._parts()[3]

    def density(self, t: jax.Array) -> jax.Array:
        """q(t), [n]."""
        w_eps, _, _, Z = self._parts()
        t_lo = self.t_lo
        w = self.sde.nll_weight(jnp.maximum(t, t_lo))
        return jnp.where(t < t_lo, 0.0 if self.truncated else w_eps, w) / Z

    def sample(self, rng: jax.Array, n: int) -> jax.Array:
        """t ~ q, [n]."""
        return self.quantile(jax.random.uniform(rng, (n,)))

    def quantile(self, u: jax.Array) -> jax.Array:
        """The time with CDF u, [n]: the mass m = u Z lies below t_lo (t = m / w(t_lo)) or above it
        (t = gamma^{-1}(gamma(t_lo) + m - flat mass))."""
        w_eps, gamma_eps, flat_mass, Z = self._parts()
        if self.truncated:
            return jnp.clip(self.sde.gamma_inv(gamma_eps + u * Z), self.t_lo, self.sde.T)
        m = u * Z
        t_up = self.sde.gamma_inv(gamma_eps + jnp.maximum(m - flat_mass, 0.0))
        return jnp.clip(jnp.where(m < flat_mass, m / w_eps, t_up), 0.0, self.sde.T)


def time_proposal(name: str, sde: SDE, t_eps: float = 1e-3, t_min: float = 0.0) -> UniformTime | ImportanceTime:
    """The proposal called `name` (one of TIME_SAMPLINGS) for `sde`: on [0, T] (t_min = 0; importance: flat
    below t_eps), or on [t0, T], t0 = sde.truncation_time(t_min) (importance: q proportional to g^2 / sigma^2)."""
    if name not in TIME_SAMPLINGS:
        raise ValueError(f"name={name!r} is not allowed; choose one of {', '.join(TIME_SAMPLINGS)}")
    if t_min == 0.0:
        return UniformTime(T=sde.T) if name == "uniform" else ImportanceTime(sde=sde, t_eps=t_eps)
    if name == "uniform":
        return UniformTime(T=sde.T, t_min=sde.truncation_time(t_min))
    return ImportanceTime(sde=sde, t_eps=t_min, truncated=True)
