"""Layers shared by the score networks: the sinusoidal time embedding, a Dense for thin matrices, the U-Net's GroupNorm."""
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


def group_norm(ch):
    """GroupNorm for `ch` channels: min(32, ch) groups, epsilon 1e-6 (as DDPM); call inside a compact module."""
    return nn.GroupNorm(num_groups=min(32, ch), epsilon=1e-6)


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
