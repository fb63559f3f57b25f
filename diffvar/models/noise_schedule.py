"""A learned noise schedule: B(s) = int_0^s beta, monotone, B(0) = 0 (diffvar.schedule turns it into an SDE).

    schedule = NoiseSchedule(beta_min=0.1, beta_max=20.0, T=1.0)
    params = schedule.init(rng, jnp.zeros((1,)))["params"]
    B = schedule.apply({"params": params}, s)        # s [n] -> B(s) [n]

    phi(u) = w1 u + w2 u^2 / 2 + sum_k v_k sigmoid(a_k u + c_k),   u = s / T,   w, v, a >= 0,
    B(s) = B_T (phi(u) - phi(0)) / (phi(1) - phi(0))   (each difference taken term by term: B(0) = 0 exactly).

phi is VDM's monotone network (dense layers whose kernels enter through their absolute values) plus the linear VP's
polynomial, so B is increasing, B(0) = 0 and B(T) = B_T exactly: the interior (w, v, a, c) never moves the end
points. B_T is the parameter `log_end` (log B_T) when learned, else the reference VP's B(T). Initialised at the
linear VP beta(s) = beta_min + (beta_max - beta_min) s / T, whose B_T is (beta_min + beta_max) T / 2; v starts
small (1e-3 of the polynomial's scale) so the hidden units can move.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


class NoiseSchedule(nn.Module):
    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    features: int = 128  # sigmoid units of the monotone network
    learn_end: bool = False  # learn B_T (by the ELBO's gradient), or keep the reference VP's

    def end(self):
        """B_T, a scalar: learned (exp of `log_end`) or the reference VP's (beta_min + beta_max) T / 2."""
        b_end = 0.5 * (self.beta_min + self.beta_max) * self.T
        if not self.learn_end:
            return jnp.asarray(b_end, jnp.float32)
        return jnp.exp(self.param("log_end", nn.initializers.constant(math.log(b_end)), ()))

    @nn.compact
    def __call__(self, s):
        """B(s), [n] for s [n]."""
        T, b0, b1 = self.T, self.beta_min, self.beta_max
        w = self.param("w", lambda _, shape: jnp.asarray([b0 * T, (b1 - b0) * T**2], jnp.float32), (2,))
        a = self.param("a", nn.initializers.normal(1.0), (self.features,))
        c = self.param("c", nn.initializers.normal(1.0), (self.features,))
        v = self.param("v", nn.initializers.normal(1e-3 * (b0 + b1) * T / self.features), (self.features,))
        w, a, v = jnp.abs(w), jnp.abs(a), jnp.abs(v)

        def rise(u):
            """phi(u) - phi(0), [n], with sigmoid(c + x) - sigmoid(c) = sigmoid(c + x) sigmoid(-c) (1 - exp(-x)):
            never negative in floating point (a difference of sigmoids can be, by rounding), 0 at u = 0."""
            x = u[:, None] * a
            hidden = jax.nn.sigmoid(x + c) * jax.nn.sigmoid(-c) * -jnp.expm1(-x)
            return w[0] * u + 0.5 * w[1] * u**2 + hidden @ v

        return self.end() * rise(s / T) / rise(jnp.ones((1,), jnp.float32))
