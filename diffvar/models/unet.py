"""DDPM U-Net (Ho et al., 2020 layout), NHWC, as the PyTorch reference (sdeflow-light) builds it.

Layout, for ch_mult = (m_0, ..., m_{L-1}) and num_res_blocks = N:
    conv_in -> L levels of [N x (ResBlock [+ Attn at attn_resolutions])] with a stride-2 conv between
    levels -> middle ResBlock, Attn, ResBlock -> L levels of [(N + 1) x (concat skip, ResBlock [+ Attn])]
    with nearest 2x upsample + conv between levels -> GroupNorm, SiLU, conv_out (zero-initialised).

Time: t [B] is scaled by `time_scale` (default 1000) before the sinusoidal embedding, as DDPM's integer
timesteps and score_sde's continuous VP models do. The PyTorch reference embeds t in [0, 1] directly, where
all but the fastest few frequencies barely move; the scale changes no parameter count.

Layers are flax's nn.Conv (3x3 'SAME' unless said), nn.GroupNorm (min(32, C) groups, epsilon 1e-6) and nn.Dense.

Parity: with time_scale=1 and the peer's weights copied in (benchmarks/quality.py's peer_params), the output
matches benchmarks/torch_peer.py's UNet to 1e-5 relative (tests/test_peer.py, digits and mnist sizes).
Initialisation uses flax's defaults (LeCun-normal kernels, zero biases), not torch's, apart from the zero conv_out.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffvar.models.embedding import timestep_embedding


def norm_channels(ch, ch_mult, num_res_blocks):
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


def check_unet_shape(height, width, ch, ch_mult, num_res_blocks):
    """Returns an error message (or None) for a (height, width) the U-Net cannot restore, or bad widths."""
    factor = 2 ** (len(ch_mult) - 1)
    if height % factor or width % factor:
        return (f"image size {height}x{width} must be divisible by 2**(len(ch_mult)-1) = {factor} "
                f"(ch_mult={tuple(ch_mult)}): a downsample of an odd size cannot be undone by 2x upsampling")
    bad = sorted({c for c in norm_channels(ch, ch_mult, num_res_blocks) if c > 32 and c % 32})
    if bad:
        return (f"ch={ch} with ch_mult={tuple(ch_mult)} gives GroupNorm inputs of {bad} channels, "
                f"not divisible by its 32 groups (use ch < 32 with small multipliers, or a multiple of 32)")
    return None


def group_norm(ch):
    """nn.GroupNorm for `ch` channels: min(32, ch) groups, epsilon 1e-6 (as DDPM); call inside a compact module."""
    return nn.GroupNorm(num_groups=min(32, ch), epsilon=1e-6)


class ResBlock(nn.Module):
    """x [B,H,W,Cin], temb [B,E] -> [B,H,W,out_ch]:
    h = conv1(silu(norm(x))) + Dense(silu(temb))[:, None, None, :];  out = skip(x) + conv2(drop(silu(norm(h)))),
    skip a 1x1 conv when Cin != out_ch, else the identity."""

    out_ch: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, temb, train=False):
        h = nn.Conv(self.out_ch, (3, 3), name="conv1")(nn.silu(group_norm(x.shape[-1])(x)))
        h = h + nn.Dense(self.out_ch, name="temb_proj")(nn.silu(temb))[:, None, None, :]
        h = nn.silu(group_norm(self.out_ch)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), name="conv2")(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), name="skip")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the P = H*W positions, residual; x [B,H,W,C] -> [B,H,W,C]:
    q, k, v = Dense(norm(x)) [B,P,C];  out = x + Dense(softmax(q k^T / sqrt(C)) v)."""

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        h = group_norm(c)(x).reshape(b, hh * ww, c)
        q, k, v = (nn.Dense(c, name=n)(h) for n in ("q", "k", "v"))
        w = nn.softmax(jnp.einsum("bic,bjc->bij", q, k) * c**-0.5, axis=-1)
        out = nn.Dense(c, name="out")(jnp.einsum("bij,bjc->bic", w, v))
        return x + out.reshape(b, hh, ww, c)


class UNet(nn.Module):
    """DDPM U-Net; y [B,H,W,C], t [B] -> [B,H,W,C], exactly 0 at initialisation (zero final conv).

    Every ResBlock gets temb [B, 4 ch] = Dense(silu(Dense(timestep_embedding(t * time_scale, ch)))).

    `attn_resolutions` are compared with the current feature-map height. Dropout (inside every ResBlock,
    between the two convs) is active only with train=True and then uses the 'dropout' rng.
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    time_scale: float = 1000.0

    @nn.compact
    def __call__(self, y, t, train: bool = False):
        if y.ndim != 4:
            raise ValueError(f"UNet expects y of shape [B, H, W, C], got {y.shape}")
        msg = check_unet_shape(y.shape[1], y.shape[2], self.ch, self.ch_mult, self.num_res_blocks)
        if msg:
            raise ValueError(msg)
        temb = timestep_embedding(t * self.time_scale, self.ch)
        temb = nn.Dense(4 * self.ch)(temb)
        temb = nn.Dense(4 * self.ch)(nn.silu(temb))

        res = y.shape[1]
        hs = [nn.Conv(self.ch, (3, 3), name="conv_in")(y)]
        for i, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, self.dropout)(hs[-1], temb, train)
                if res in self.attn_resolutions:
                    h = AttnBlock()(h)
                hs.append(h)
            if i != len(self.ch_mult) - 1:
                c = hs[-1].shape[-1]
                hs.append(nn.Conv(c, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(hs[-1]))
                res //= 2

        h = hs[-1]
        h = ResBlock(h.shape[-1], self.dropout)(h, temb, train)
        h = AttnBlock()(h)
        h = ResBlock(h.shape[-1], self.dropout)(h, temb, train)

        for i, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock(self.ch * mult, self.dropout)(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
                if res in self.attn_resolutions:
                    h = AttnBlock()(h)
            if i != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = nn.Conv(h.shape[-1], (3, 3))(h)
                res *= 2
        assert not hs

        h = nn.silu(group_norm(h.shape[-1])(h))
        return nn.Conv(y.shape[-1], (3, 3), kernel_init=nn.initializers.zeros, name="conv_out")(h)
