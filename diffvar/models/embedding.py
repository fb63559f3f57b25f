"""The sinusoidal time embedding shared by the score networks (DDPM's, as in the Transformer's positions)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """t [B] -> [B, dim]: [sin(t w_k), cos(t w_k)] for k < dim // 2, w_k = 10000^(-k / (dim // 2 - 1)).

    An odd `dim` gets one trailing zero column.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb
