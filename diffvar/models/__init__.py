"""Score networks (MLP for toy data, DDPM U-Net for images) and output parameterisations.

model = make_model(config.model, data_shape)      # flax module: model.apply(params, y, t, train=...)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffvar.models.mlp import ACTIVATIONS, MLP, TIME_EMBEDDINGS
from diffvar.models.param import PARAMETERISATIONS, make_score_fn, output_to_score, score_to_output
from diffvar.models.unet import UNet, check_unet_shape

MODELS = ("mlp", "unet")
# model.dtype: the dtype the network computes in (parameters, optimizer state and the output stay float32)
DTYPES = ("float32", "bfloat16")
_CLASSES = {"mlp": MLP, "unet": UNet}
_FIELDS = {
    "mlp": ("hidden", "depth", "activation", "time_embedding", "time_scale", "dtype"),
    "unet": ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "time_scale", "dtype"),
}


def _defaults(cls):
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name in _FIELDS[cls.__name__.lower()]}


def make_model(cfg: Mapping, data_shape: Sequence[int]) -> nn.Module:
    """The flax module named by cfg.name, built from cfg's fields (missing ones take the module defaults).

    cfg: ConfigDict (or dict) with `name` in MODELS; keys that are not the model's fields are ignored.
    data_shape: one example's shape, e.g. (2,) or (H, W, C) (the U-Net needs rank 3).
    """
    name = cfg.get("name") if hasattr(cfg, "get") else getattr(cfg, "name", None)
    if name not in MODELS:
        raise ValueError(f"model.name must be one of {MODELS}, got {name!r}")
    kw = _defaults(_CLASSES[name])
    kw.update({k: cfg[k] for k in _FIELDS[name] if k in cfg and cfg[k] is not None})
    data_shape = tuple(data_shape)
    dtype = kw["dtype"] if isinstance(kw["dtype"], str) else jnp.dtype(kw["dtype"]).name
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {DTYPES}, got {kw['dtype']!r}")
    kw["dtype"] = jnp.dtype(dtype)

    if name == "mlp":
        if kw["activation"] not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {tuple(ACTIVATIONS)}, got {kw['activation']!r}")
        if kw["time_embedding"] not in TIME_EMBEDDINGS:
            raise ValueError(f"model.time_embedding must be one of {TIME_EMBEDDINGS}, got {kw['time_embedding']!r}")
        for k in ("hidden", "depth"):
            if int(kw[k]) != kw[k] or kw[k] < 1:
                raise ValueError(f"model.{k} must be a positive integer, got {kw[k]!r}")
        return MLP(**kw)

    kw["ch_mult"] = tuple(int(m) for m in kw["ch_mult"])
    kw["attn_resolutions"] = tuple(int(r) for r in kw["attn_resolutions"])
    if len(data_shape) != 3:
        raise ValueError(f"model.name='unet' needs image data of shape (H, W, C), got data_shape={data_shape}")
    if not kw["ch_mult"] or min(kw["ch_mult"]) < 1:
        raise ValueError(f"model.ch_mult must be a non-empty sequence of positive integers, got {kw['ch_mult']}")
    if int(kw["ch"]) != kw["ch"] or kw["ch"] < 2:
        raise ValueError(f"model.ch must be an integer >= 2, got {kw['ch']!r}")
    if int(kw["num_res_blocks"]) != kw["num_res_blocks"] or kw["num_res_blocks"] < 1:
        raise ValueError(f"model.num_res_blocks must be a positive integer, got {kw['num_res_blocks']!r}")
    if not 0.0 <= kw["dropout"] < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {kw['dropout']!r}")
    msg = check_unet_shape(data_shape[0], data_shape[1], kw["ch"], kw["ch_mult"], kw["num_res_blocks"])
    if msg:
        key = "model.ch" if msg.startswith("ch=") else "model.ch_mult"
        raise ValueError(f"{key}: {msg}")
    return UNet(**kw)


__all__ = [
    "MODELS",
    "DTYPES",
    "MLP",
    "UNet",
    "make_model",
    "PARAMETERISATIONS",
    "output_to_score",
    "score_to_output",
    "make_score_fn",
]
