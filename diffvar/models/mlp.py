"""MLP score network for low-dimensional (toy) data."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffvar.models.embedding import timestep_embedding

ACTIVATIONS = {"softplus": jax.nn.softplus, "silu": nn.silu, "relu": nn.relu, "tanh": jnp.tanh}
TIME_EMBEDDINGS = ("concat", "sinusoidal")


class MLP(nn.Module):
    """y [B, ...], t [B] -> [B, ...]: h_0 = concat(flatten(y), emb(t)), h_{i+1} = act(Dense(hidden)(h_i)) for
    `depth` layers, out = Dense(d)(h_depth) reshaped to y's shape (d = the size of one example).

    time_embedding 'concat': emb(t) = t, one column (the PyTorch reference's toy MLP, d+1 -> 128 x 3 -> d);
    'sinusoidal': emb(t) = timestep_embedding(t * time_scale, hidden).

    Precision: the Dense layers and activations compute in `dtype` (model.dtype; flax casts the float32 input
    and parameters to it), parameters stay float32, and the output is cast back to float32 at the end.
    """

    hidden: int = 128
    depth: int = 3
    activation: str = "softplus"
    time_embedding: str = "concat"
    time_scale: float = 1000.0
    dtype: Any = jnp.float32  # computation dtype: float32 | bfloat16 (parameters stay float32)

    @nn.compact
    def __call__(self, y: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        if self.time_embedding == "concat":
            temb = jnp.asarray(t, y.dtype)[:, None]
        elif self.time_embedding == "sinusoidal":
            temb = timestep_embedding(t * self.time_scale, self.hidden).astype(y.dtype)
        else:
            raise ValueError(f"time_embedding must be one of {TIME_EMBEDDINGS}, got {self.time_embedding!r}")
        act = ACTIVATIONS[self.activation]
        d = math.prod(y.shape[1:])
        h = jnp.concatenate([y.reshape(y.shape[0], d), temb], axis=1)
        for _ in range(self.depth):
            h = act(nn.Dense(self.hidden, dtype=self.dtype)(h))
        out = nn.Dense(d, dtype=self.dtype)(h).reshape(y.shape)
        return out.astype(jnp.float32)  # the network's edge: everything downstream is float32
