"""Divergences of per-example maps: Hutchinson's estimator (one JVP per probe) and the exact trace.

Shared by the ELBO's ISM integrand (diffvar.elbo), the probability-flow ODE (diffvar.ode) and the SSM loss.
A per-example map fn: [B, ...] -> [B, ...] has Jacobian blocks J_b; div fn(y)_b = tr J_b, returned as [B].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffvar.errors import check_choice

DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")


def check_x(x: jax.Array, name: str = "x") -> None:
    """Raises ValueError unless x is a floating-point array [B, ...] (B >= 1, at least one data dimension).

    Only shapes and dtypes are checked, so a call behaves the same under jit as outside it. Model-space
    data: dequantize integer levels first (dequantization.to_model_space)."""
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(f"{name} must be an array [B, ...], got {type(x).__name__}")
    if len(shape) < 2 or shape[0] < 1:
        raise ValueError(
            f"{name} must have shape [B, ...] with B >= 1 and at least one data dimension, got shape {tuple(shape)}"
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a floating-point array (model space; integer levels go through "
            f"to_model_space first), got dtype {dtype}"
        )


def per_example_sum(v: jax.Array) -> jax.Array:
    """Sum over all but the batch axis, [B]."""
    return jnp.sum(jnp.reshape(v, (v.shape[0], -1)), axis=1)


def draw_probe(rng: jax.Array, shape: tuple, kind: str = "rademacher") -> jax.Array:
    """Hutchinson probe v of `shape` with E[v v^T] = I: Rademacher (+-1) or standard normal entries."""
    check_choice("probe", kind, PROBES, error=ValueError)
    if kind == "rademacher":
        return jax.random.rademacher(rng, shape, dtype=jnp.float32)
    return jax.random.normal(rng, shape)


def value_and_divergence(
    fn: Callable,
    y: jax.Array,
    rng: jax.Array | None = None,
    divergence: str = "hutchinson",
    probe_kind: str = "rademacher",
    v: jax.Array | None = None,
    probes: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """(fn(y), div_y fn(y)) for a per-example map fn: [B, ...] -> [B, ...]; divergence [B].

    hutchinson: v . (J v) with one probe v (one JVP), drawn from `rng` or, if given, the fixed probe `v`
    (shape of y); probes = P > 1: the mean of v_p . (J v_p) over P probes drawn from `rng`, one linearisation
    and one vmapped JVP over the probes (fn runs once). exact: sum_i (J e_i)_i (d JVPs, small d only).
    """
    check_choice("divergence", divergence, DIVERGENCES, error=ValueError)
    out_shape = jax.eval_shape(fn, y).shape
    if out_shape != y.shape:
        raise ValueError(f"score_fn must return an array of the input's shape {y.shape}, got {out_shape}")
    if divergence == "hutchinson" and probes > 1:
        if rng is None:
            raise ValueError(f"probes={probes} needs rng, got None")
        vs = draw_probe(rng, (probes,) + y.shape, probe_kind)  # [P, B, ...]
        out, jvp_fn = jax.linearize(fn, y)
        jvs = jax.vmap(jvp_fn)(vs)
        return out, jnp.mean(jax.vmap(per_example_sum)(vs * jvs), axis=0)
    if divergence == "hutchinson":
        if v is None:
            if rng is None:
                raise ValueError("divergence='hutchinson' needs rng or a fixed probe v, got neither")
            v = draw_probe(rng, y.shape, probe_kind)
        elif v.shape != y.shape:
            raise ValueError(f"v must have y's shape {y.shape}, got {v.shape}")
        out, jv = jax.jvp(fn, (y,), (v,))
        return out, per_example_sum(v * jv)
    d = math.prod(y.shape[1:])
    basis = jnp.reshape(jnp.eye(d, dtype=y.dtype), (d, 1) + y.shape[1:])
    out, jvp_fn = jax.linearize(fn, y)
    jes = jax.lax.map(lambda e: jvp_fn(jnp.broadcast_to(e, y.shape)), basis)  # [d, B, ...]
    diag = jnp.reshape(jes, (d, y.shape[0], d))[jnp.arange(d), :, jnp.arange(d)]  # [d, B]
    return out, jnp.sum(diag, axis=0)
