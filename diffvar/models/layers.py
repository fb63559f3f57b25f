"""Layers shared by the score networks: the sinusoidal time embedding, Dense, softplus, and the U-Net's Conv and
GroupNorm.

Dense, Conv and GroupNorm have exactly flax's parameters (names, shapes, initial values) and compute the same
function; they differ in how (each measured in the README). XLA:CPU sums over rows ([N, C] -> [C], as in every
bias gradient and GroupNorm statistic) several times slower than it multiplies by a vector of ones, so Conv and
GroupNorm broadcast and sum with matmuls (`rows`, `per_example`, `sum_positions`), whose gradients are matmuls
too; Dense replaces a thin matmul by a multiply-and-sum loop; softplus takes one exponential for its value and
derivative together.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def timestep_embedding(t, dim):
    """Sinusoidal embedding [sin(t w_k), cos(t w_k)], w_k = 10000^(-k / (half - 1)); t [B] -> [B, dim]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def rows(v, n):
    """v [C] -> [n, C], each row v, as the matmul ones[n, 1] @ v[1, C] (its gradient: ones[n]^T @ g)."""
    return jnp.ones((n, 1), v.dtype) @ v.reshape(1, -1)


def per_example(s, p):
    """s [B, C] -> [B, p, C], s[b] at each of p positions, as a batched matmul ones[b, p, 1] @ s[b, None, :]."""
    return jnp.einsum("bpk,bkc->bpc", jnp.ones((s.shape[0], p, 1), s.dtype), s[:, None, :])


def sum_positions(x):
    """x [B, P, C] -> [B, C], the sum over P, as a batched matmul ones[b, P]^T @ x[b]."""
    return jnp.einsum("bpk,bpc->bkc", jnp.ones(x.shape[:2] + (1,), x.dtype), x)[:, 0]


class GroupNorm(nn.Module):
    """nn.GroupNorm on x [B, H, W, C]: y = (x - mean_g) / sqrt(var_g + epsilon) * scale + bias, with mean and
    var (E[x^2] - E[x]^2, as flax) over H, W and the C / num_groups channels of each group."""

    num_groups: int = 32
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        g, p = self.num_groups, hh * ww
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        xr = x.reshape(b, p, c)
        n = p * (c // g)
        mean = sum_positions(xr).reshape(b, g, c // g).sum(-1) / n                       # [B, G]
        var = jnp.maximum(sum_positions(xr * xr).reshape(b, g, c // g).sum(-1) / n - mean * mean, 0.0)
        inv = jax.lax.rsqrt(var + self.epsilon)
        mean, inv = (jnp.repeat(a, c // g, axis=1) for a in (mean, inv))                  # [B, C]
        y = ((xr - per_example(mean, p)) * per_example(inv, p)).reshape(b * p, c)
        return (y * rows(scale, b * p) + rows(bias, b * p)).reshape(x.shape)


def group_norm(ch):
    """GroupNorm for `ch` channels: min(32, ch) groups, epsilon 1e-6 (as DDPM); call inside a compact module."""
    return GroupNorm(num_groups=min(32, ch), epsilon=1e-6)


class Conv(nn.Module):
    """nn.Conv, NHWC: x [B, H, W, Cin] -> [B, H', W', features], kernel [*kernel_size, Cin, features] + bias."""

    features: int
    kernel_size: tuple
    strides: tuple = (1, 1)
    padding: object = "SAME"
    kernel_init: object = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, tuple(self.kernel_size) + (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        y = jax.lax.conv_general_dilated(x, kernel, self.strides, self.padding,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (y.reshape(-1, self.features) + rows(bias, y.size // self.features)).reshape(y.shape)


@jax.custom_jvp
def softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), as jax.nn.softplus; its derivative sigmoid(x) is computed from
    the same e^-|x| (jax's rule, through logaddexp, takes further exponentials)."""
    return _softplus_and_sigmoid(x)[0]


def _softplus_and_sigmoid(x):
    e = jnp.exp(-jnp.abs(x))
    return jnp.maximum(x, 0.0) + jnp.log1p(e), jnp.where(x >= 0, 1.0, e) / (1.0 + e)


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    value, sigmoid = _softplus_and_sigmoid(primals[0])
    return value, sigmoid * tangents[0]


# With at most this many input or output features, Dense multiplies and sums instead of calling a matmul.
THIN = 8


class Dense(nn.Module):
    """nn.Dense (same parameters, same initialisation): x [..., n] -> x @ kernel + bias [..., features].

    When n or `features` is at most THIN (the 2-D toys' first and last layers), y = sum_n x[..., n, None] *
    kernel[n] + bias is computed instead, as one fused loop: XLA:CPU runs such a thin matmul, and its
    gradient, as a dot call that costs more than the arithmetic (measured in the README)."""

    features: int

    @nn.compact
    def __call__(self, x):
        n = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (n, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if min(n, self.features) <= THIN:
            return jnp.sum(x[..., :, None] * kernel, axis=-2) + bias
        return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ()))) + bias
