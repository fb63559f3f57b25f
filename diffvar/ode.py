"""The probability-flow ODE's log-likelihood (lambda = 1): log p(x) by an adaptive solve with its trace.

    log p(x) = log p_prior(y_T) + int_{t0}^T div(f - g^2 score / 2)(y_s, s) ds,   dy/ds = f - g^2 score / 2

`score_fn(y, t) -> grad_y log p_t(y)` with y [B, ...], t [B]; values per example, in nats, [B].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffvar.divergence import DIVERGENCES, PROBES, check_x, draw_probe, value_and_divergence
from diffvar.options import Options, option
from diffvar.sampling import probability_flow_drift, solve_adaptive
from diffvar.sde import SDE

STEP_SIZES = ("batch", "per_example")
EXACT_TRACE_MAX_DIM = 16  # divergence "auto": the exact trace (d JVPs) up to this many dimensions


@dataclasses.dataclass(frozen=True)
class OdeOptions(Options):
    """How ode_logp() solves: its keyword arguments, the eval config's keys (eval.ode_<name>),
    scripts/evaluate.py's flags (--ode_<name>) and the label of the ODE estimate."""

    rtol: float = option(1e-5, "ODE solver relative tolerance.", minimum=0, strict=True)
    atol: float = option(1e-5, "ODE solver absolute tolerance.", minimum=0, strict=True)
    divergence: str = option(
        "exact",
        f"ODE trace: exact | hutchinson (one probe per example, held fixed along "
        f"the path) | auto (exact up to {EXACT_TRACE_MAX_DIM} dims, else hutchinson).",
        ("auto",) + DIVERGENCES,
    )
    probe: str = option("rademacher", "The ODE's Hutchinson probe: rademacher | gaussian.", PROBES)
    step_size: str = option(
        "batch",
        "ODE step-size control: batch (one for the whole batch) | per_example (each example its own solve).",
        STEP_SIZES,
    )
    max_steps: int = option(4096, "Solver steps before a solve counts as failed (NFE -1).", minimum=1, integer=True)


def trace_estimator(divergence: str, dim: int, importance_samples: int = 1) -> str:
    """The trace `divergence` names for data of `dim` dimensions: "auto" is exact up to EXACT_TRACE_MAX_DIM
    dimensions or when importance_samples > 1 (the only bound there), else hutchinson."""
    if divergence != "auto":
        return divergence
    return "exact" if dim <= EXACT_TRACE_MAX_DIM or importance_samples > 1 else "hutchinson"


def vmap_over_examples(fn: Callable, *args: jax.Array):
    """jax.vmap of fn over the batch axis of args, fn seeing each example as a batch of one: fn's outputs on
    [1, ...] inputs, stacked into leaves [B, ...].

    XLA:CPU workaround (jaxlib 0.10.2): a jitted vmap of size one gave wrong values, so a batch of one is fn on
    the batch itself (jax-ml/jax#39103 is the same release's CPU miscompilation of a jitted vmap, right in
    0.10.1; re-check when jaxlib moves)."""
    if args[0].shape[0] == 1:
        return jax.tree.map(lambda v: v[None], fn(*args))
    return jax.vmap(lambda *a: fn(*(v[None] for v in a)))(*args)


def ode_logp(
    score_fn: Callable,
    sde: SDE,
    x: jax.Array,
    rng: jax.Array,
    t_min: float = 0.0,
    prior_logp: Callable | None = None,
    **options,
) -> tuple[jax.Array, jax.Array]:
    """(log p(x) [B], NFE) under the probability-flow ODE from t0 = sde.truncation_time(t_min); options:
    OdeOptions' fields (rtol, atol, divergence, probe, step_size, max_steps).

    Solved by sampling.solve_adaptive (Tsit5, PID step-size control); t0 is t_min itself for a fixed schedule,
    the time of the reference's gamma(t_min) for a learned one. step_size "batch": the whole batch as one system
    (one error norm, one step size); "per_example": each example its own solve and step size (vmapped: the loop
    runs until the slowest example is done, the others masked). With divergence="hutchinson" one probe per
    example is drawn and held fixed along the path (FFJORD). NFE, from the solve's own statistics, counts the
    drift evaluations (6 per attempted Tsit5 step plus the first, by FSAL; per_example: the largest over the
    batch, which sets the wall time); it is -1 when a solve needed more than max_steps steps (the log p values
    are then meaningless). `prior_logp(y_T) -> [B]` replaces the SDE's prior, e.g. by the exact p_T of a test
    mixture, which removes the (tiny) prior mismatch from the comparison.
    """
    o = OdeOptions(**options)
    check_x(x)
    divergence = trace_estimator(o.divergence, x[0].size)
    v = draw_probe(rng, x.shape, o.probe) if divergence == "hutchinson" else jnp.zeros_like(x)

    def solve(x, v):
        b = x.shape[0]

        def vector_field(s, state):
            t = jnp.full((b,), s)
            return value_and_divergence(
                lambda z: probability_flow_drift(score_fn, sde, z, t),
                state[0],
                divergence=divergence,
                v=v if divergence == "hutchinson" else None,
            )

        return solve_adaptive(
            vector_field,
            (x, jnp.zeros((b,), x.dtype)),
            sde.truncation_time(t_min),
            sde.T,
            o.rtol,
            o.atol,
            o.max_steps,
            throw=False,
        )

    if o.step_size == "batch":
        (y_T, delta), nfe = solve(x, v)
    else:
        (y_T, delta), nfes = vmap_over_examples(solve, x, v)
        y_T, delta = y_T[:, 0], delta[:, 0]
        nfe = jnp.where(jnp.any(nfes < 0), -1, jnp.max(nfes))
    return (sde.prior_logp if prior_logp is None else prior_logp)(y_T) + delta, nfe
