"""DDPM U-Net (Ho et al., 2020 layout), NHWC, as the PyTorch reference (sdeflow-light) builds it.

Layout, for ch_mult = (m_0, ..., m_{L-1}) and num_res_blocks = N:
    conv_in -> L levels of [N x (ResBlock [+ Attn at attn_resolutions])] with a stride-2 conv between
    levels -> middle ResBlock, Attn, ResBlock -> L levels of [(N + 1) x (concat skip, ResBlock [+ Attn])]
    with nearest 2x upsample + conv between levels -> GroupNorm, SiLU, conv_out (zero-initialised).

Time: t [B] is scaled by `time_scale` (default 1000) before the sinusoidal embedding, as DDPM's integer
timesteps and score_sde's continuous VP models do. The PyTorch reference embeds t in [0, 1] directly, where
all but the fastest few frequencies barely move; the scale changes no parameter count.

Layers are flax's nn.Conv (3x3 'SAME' unless said), nn.GroupNorm (min(32, C) groups, epsilon 1e-6) and nn.Dense.

Precision (`dtype`, model.dtype): every layer computes in `dtype` (flax casts its input and its float32
parameters to it: the convolutions, matmuls and attention run in bfloat16 under 'bfloat16'; GroupNorm takes its
statistics in float32 and the softmax runs in float32), parameters stay float32 (param_dtype), and the output is
cast back to float32 at the end of __call__, so the parameterisation, the SDE and the ELBO see float32.

Parity: with time_scale=1 and the peer's weights copied in (benchmarks/quality.py's peer_params), the output
matches benchmarks/torch_peer.py's UNet to 1e-5 relative (tests/test_peer.py, digits and mnist sizes).
Initialisation uses flax's defaults (LeCun-normal kernels, zero biases), not torch's, apart from the zero conv_out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffvar.models.embedding import timestep_embedding


def norm_channels(ch: int, ch_mult: Sequence[int], num_res_blocks: int) -> list[int]:
    """Channel counts of every GroupNorm in the U-Net (including the up path's concatenated inputs)."""
    out, skips, cur = [], [ch], ch
    for i, m in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            out += [cur, ch * m]
            cur = ch * m
            skips.append(cur)
        if i != len(ch_mult) - 1:
            skips.append(cur)
    for m in reversed(ch_mult):
        for _ in range(num_res_blocks + 1):
            c = cur + skips.pop()
            out += [c, ch * m]
            cur = ch * m
    return out


def check_unet_shape(height: int, width: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int) -> str | None:
    """Returns an error message (or None) for a (height, width) the U-Net cannot restore, or bad widths."""
    factor = 2 ** (len(ch_mult) - 1)
    if height % factor or width % factor:
        return (
            f"image size {height}x{width} must be divisible by 2**(len(ch_mult)-1) = {factor} "
            f"(ch_mult={tuple(ch_mult)}): a downsample of an odd size cannot be undone by 2x upsampling"
        )
    bad = sorted({c for c in norm_channels(ch, ch_mult, num_res_blocks) if c > 32 and c % 32})
    if bad:
        return (
            f"ch={ch} with ch_mult={tuple(ch_mult)} gives GroupNorm inputs of {bad} channels, "
            f"not divisible by its 32 groups (use ch < 32 with small multipliers, or a multiple of 32)"
        )
    return None


def group_norm(ch: int, dtype: Any) -> nn.GroupNorm:
    """nn.GroupNorm for `ch` channels: min(32, ch) groups, epsilon 1e-6 (as DDPM), output in `dtype` (statistics
    in float32 whatever `dtype`: flax's); call inside a compact module."""
    return nn.GroupNorm(num_groups=min(32, ch), epsilon=1e-6, dtype=dtype)


class ResBlock(nn.Module):
    """x [B,H,W,Cin], temb [B,E] -> [B,H,W,out_ch]:
    h = conv1(silu(norm(x))) + Dense(silu(temb))[:, None, None, :];  out = skip(x) + conv2(drop(silu(norm(h)))),
    skip a 1x1 conv when Cin != out_ch, else the identity."""

    out_ch: int
    dropout: float = 0.0
    dtype: Any = jnp.float32  # computation dtype (the module docstring's precision)

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, train: bool = False) -> jax.Array:
        dt = self.dtype
        h = nn.Conv(self.out_ch, (3, 3), dtype=dt, name="conv1")(nn.silu(group_norm(x.shape[-1], dt)(x)))
        h = h + nn.Dense(self.out_ch, dtype=dt, name="temb_proj")(nn.silu(temb))[:, None, None, :]
        h = nn.silu(group_norm(self.out_ch, dt)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), dtype=dt, name="conv2")(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), dtype=dt, name="skip")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the P = H*W positions, residual; x [B,H,W,C] -> [B,H,W,C]:
    q, k, v = Dense(norm(x)) [B,P,C];  out = x + Dense(softmax(q k^T / sqrt(C)) v).
    The products in `dtype`; the softmax in float32, its weights cast back to `dtype`."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        dt = self.dtype
        h = group_norm(c, dt)(x).reshape(b, hh * ww, c)
        q, k, v = (nn.Dense(c, dtype=dt, name=n)(h) for n in ("q", "k", "v"))
        logits = jnp.einsum("bic,bjc->bij", q, k) * c**-0.5
        w = nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dt)
        out = nn.Dense(c, dtype=dt, name="out")(jnp.einsum("bij,bjc->bic", w, v))
        return x + out.reshape(b, hh, ww, c)


class UNet(nn.Module):
    """DDPM U-Net; y [B,H,W,C], t [B] -> [B,H,W,C], exactly 0 at initialisation (zero final conv).

    Every ResBlock gets temb [B, 4 ch] = Dense(silu(Dense(timestep_embedding(t * time_scale, ch)))); the
    sinusoids are computed in float32 (t * 1000 has no fraction left in bfloat16), the Dense layers in `dtype`.
    Returns float32 whatever `dtype` (the cast back at the network's edge).

    `attn_resolutions` are compared with the current feature-map height. Dropout (inside every ResBlock,
    between the two convs) is active only with train=True and then uses the 'dropout' rng.
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    time_scale: float = 1000.0
    dtype: Any = jnp.float32  # computation dtype: float32 | bfloat16 (parameters stay float32)

    @nn.compact
    def __call__(self, y: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
        if y.ndim != 4:
            raise ValueError(f"UNet expects y of shape [B, H, W, C], got {y.shape}")
        msg = check_unet_shape(y.shape[1], y.shape[2], self.ch, self.ch_mult, self.num_res_blocks)
        if msg:
            raise ValueError(msg)
        dt = self.dtype
        temb = timestep_embedding(t * self.time_scale, self.ch)
        temb = nn.Dense(4 * self.ch, dtype=dt)(temb)
        temb = nn.Dense(4 * self.ch, dtype=dt)(nn.silu(temb))

        res = y.shape[1]
        hs = [nn.Conv(self.ch, (3, 3), dtype=dt, name="conv_in")(y)]
        for i, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, self.dropout, dt)(hs[-1], temb, train)
                if res in self.attn_resolutions:
                    h = AttnBlock(dt)(h)
                hs.append(h)
            if i != len(self.ch_mult) - 1:
                c = hs[-1].shape[-1]
                hs.append(nn.Conv(c, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=dt)(hs[-1]))
                res //= 2

        h = hs[-1]
        h = ResBlock(h.shape[-1], self.dropout, dt)(h, temb, train)
        h = AttnBlock(dt)(h)
        h = ResBlock(h.shape[-1], self.dropout, dt)(h, temb, train)

        for i, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock(self.ch * mult, self.dropout, dt)(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
                if res in self.attn_resolutions:
                    h = AttnBlock(dt)(h)
            if i != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = nn.Conv(h.shape[-1], (3, 3), dtype=dt)(h)
                res *= 2
        assert not hs

        h = nn.silu(group_norm(h.shape[-1], dt)(h))
        out = nn.Conv(y.shape[-1], (3, 3), kernel_init=nn.initializers.zeros, dtype=dt, name="conv_out")(h)
        return out.astype(jnp.float32)  # the network's edge: everything downstream is float32
