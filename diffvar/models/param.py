"""What the network outputs, and how that maps to the score grad_y log p_t(y).

    'drift': out = a = g(t) * score        (the paper's choice; the reference trains this)
    'score': out = score
    'eps'  : out = eps = -sigma(t) * score  (score = -eps / sigma)

Shapes: out / score [B, ...], t [B]; `sde` is any diffvar.sde SDE (diffusion(t), alpha_sigma(t)).
Precision: out is float32 whatever model.dtype (the networks cast their output back at their edge), so these
conversions, the SDE's coefficients and everything the ELBO sums from them run in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from diffvar.sde import SDE, bcast

PARAMETERISATIONS = ("drift", "score", "eps")


def _check(kind: str) -> None:
    if kind not in PARAMETERISATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERISATIONS}, got {kind!r}")


def output_to_score(out: jax.Array, t: jax.Array, sde: SDE, kind: str) -> jax.Array:
    """Network output -> score, shape of out."""
    _check(kind)
    if kind == "drift":
        return out / bcast(sde.diffusion(t), out)
    if kind == "eps":
        return -out / bcast(sde.alpha_sigma(t)[1], out)
    return out


def score_to_output(score: jax.Array, t: jax.Array, sde: SDE, kind: str) -> jax.Array:
    """Score -> network output (the exact inverse of output_to_score), shape of score."""
    _check(kind)
    if kind == "drift":
        return score * bcast(sde.diffusion(t), score)
    if kind == "eps":
        return -score * bcast(sde.alpha_sigma(t)[1], score)
    return score


def make_score_fn(
    apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array], sde: SDE, kind: str
) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """score_fn(params, y, t) -> score, for a network apply_fn(params, y, t) with output `kind`."""
    _check(kind)

    def score_fn(params: Any, y: jax.Array, t: jax.Array) -> jax.Array:
        return output_to_score(apply_fn(params, y, t), t, sde, kind)

    return score_fn
