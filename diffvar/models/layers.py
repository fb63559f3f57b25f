"""Layers shared by the score networks: the sinusoidal time embedding and the U-Net's GroupNorm."""
from __future__ import annotations

import math

import flax.linen as nn
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
