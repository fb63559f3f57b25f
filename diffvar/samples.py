"""Drawing samples from a model and writing them: PNG grids (images) or scatters over the density (2-D toys),
and optionally an .npz with the samples and how they were drawn.

    draw = make_sampler(exp, num=64, lam=0.0, steps=500)        # jitted once; draw(params, rng)
    x, nfe = draw(params, rng)                                   # data space: images in [0, 1]
    write(exp, np.asarray(x), "samples/step_00001000.png")
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from diffvar import plots, sampling
from diffvar.files import atomic_path


def make_sampler(exp, num, lam=0.0, steps=1000, ode=False, rtol=1e-5, atol=1e-5, score=None):
    """Jitted (params, rng) -> (samples [num, ...] in data space, NFE or -1), built once per run.

    ode=False: the lambda-family Euler-Maruyama sampler with `steps` steps (lam = 0 reverse SDE ... 1
    probability-flow ODE); ode=True: the probability-flow ODE by an adaptive solver (Tsit5, rtol/atol; lam
    and steps unused). Both stop at t = objective.t_eps. `score` maps params -> score_fn (default exp.score_fn).
    """
    score = score or exp.score_fn
    shape = (num,) + exp.info.shape
    t_min = exp.config.objective.t_eps

    def draw(params, rng):
        if ode:
            y, nfe = sampling.sample_ode(score(params), exp.sde, rng, shape, rtol=rtol, atol=atol, t_min=t_min)
        else:
            y = sampling.sample_lambda(score(params), exp.sde, rng, shape, lam=lam, steps=steps, t_min=t_min)
            nfe = jnp.asarray(-1, jnp.int32)
        return exp.to_data_space(y), nfe

    return jax.jit(draw)


def write(exp, samples, png_path, npz_path=None, title=None, **meta):
    """PNG grid (images; quantized to the data's levels) or scatter over the exact density (2-D toys); with
    npz_path also an .npz holding `samples` and `meta` (values that are None are left out). Atomic writes."""
    if exp.info.levels is None:
        logp = (lambda p: np.asarray(exp.info.exact_logp(jnp.asarray(p)))) if exp.info.exact_logp else None
        plots.save_scatter_2d(png_path, samples, logp_fn=logp, title=title)
    else:
        plots.save_image_grid(png_path, samples, levels=exp.info.levels)
    if npz_path:
        os.makedirs(os.path.dirname(os.path.abspath(npz_path)), exist_ok=True)
        with atomic_path(npz_path) as tmp, open(tmp, "wb") as f:
            np.savez(f, samples=samples, **{k: np.asarray(v) for k, v in meta.items() if v is not None})
