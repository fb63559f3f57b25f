"""Figures written to files: image grids, 2-D sample scatters, a model's samples, training curves.

Matplotlib is used through its object-oriented API on the Agg canvas (`Figure` + `FigureCanvasAgg`), never
through pyplot, so importing this module changes no global matplotlib state and works headless. Every
function writes atomically: to a temporary file in the destination's directory, then `os.replace`, so a
reader (TensorBoard, a notebook, a file watcher) never sees a half-written PNG.
"""

from __future__ import annotations

import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from diffvar.files import atomic_path
from diffvar.logs import finite_number, read_metrics


def save_figure(fig, path, dpi=100):
    """Renders a matplotlib Figure to a PNG at path, atomically (no pyplot, no global state)."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


# ----------------------------------------------------------------------------------------------
# Image grids.


def _auto_scale(h, w):
    """Nearest-neighbour upscaling factor: small images (8x8 digits) get x4, MNIST/CIFAR sizes x2, large x1."""
    side = max(h, w)
    if side <= 16:
        return 4
    if side <= 64:
        return 2
    return 1


def save_image_grid(path, images, levels=None, scale=None, pad=1):
    """Writes images [N, H, W, C] (values in [0, 1], C = 1 or 3) as one PNG grid.

    The grid has ceil(sqrt(N)) columns and as many rows as needed, `pad` pixels of mid-grey between cells.
    `levels` (e.g. 17 for sklearn digits, 256 for 8-bit images): if given, values are first quantized the way
    the data were (k = floor(K v) clipped to K - 1, shown as k / (K - 1)), so the grid shows what a sample
    would be after rounding to the data's levels. `scale` is the nearest-neighbour upscaling factor (default:
    x4 for images up to 16 px, x2 up to 64 px, else x1). [N, H, W] arrays are taken as single-channel.
    Non-finite values are shown as 0; values are clipped to [0, 1].
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(f"images must have shape [N, H, W, C] with N >= 1 and C in (1, 3), got {images.shape}")
    if levels is not None and not (isinstance(levels, (int, np.integer)) and levels >= 2):
        raise ValueError(f"levels must be an int >= 2 or None, got {levels!r}")
    n, h, w, c = images.shape
    scale = _auto_scale(h, w) if scale is None else int(scale)
    if scale < 1 or pad < 0:
        raise ValueError(f"scale must be >= 1 and pad >= 0, got scale={scale}, pad={pad}")

    images = np.clip(np.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if levels is not None:
        images = np.minimum(np.floor(images * levels), levels - 1) / (levels - 1)
    pixels = np.round(images * 255.0).astype(np.uint8)

    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = pixels[i]
    if scale > 1:
        grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    img = Image.fromarray(np.ascontiguousarray(grid[..., 0] if c == 1 else grid))  # L or RGB
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


# ----------------------------------------------------------------------------------------------
# 2-D scatter.


def _limits(points, lim):
    """((xmin, xmax), (ymin, ymax)) from `lim` (None: from the data; a number L: [-L, L]; a pair (lo, hi);
    or a pair of pairs)."""
    if lim is None:
        if len(points) == 0:
            return (-1.0, 1.0), (-1.0, 1.0)
        lo = np.percentile(points, 0.5, axis=0)
        hi = np.percentile(points, 99.5, axis=0)
        margin = 0.1 * np.maximum(hi - lo, 1e-6)
        return (lo[0] - margin[0], hi[0] + margin[0]), (lo[1] - margin[1], hi[1] + margin[1])
    arr = np.asarray(lim, dtype=np.float64)
    if arr.ndim == 0:
        return (-float(arr), float(arr)), (-float(arr), float(arr))
    if arr.shape == (2,):
        return tuple(arr), tuple(arr)
    if arr.shape == (2, 2):
        return tuple(arr[0]), tuple(arr[1])
    raise ValueError(f"lim must be None, a number, (lo, hi) or ((xlo, xhi), (ylo, yhi)), got {lim!r}")


def save_scatter_2d(path, points, logp_fn=None, lim=None, title=None, grid_size=200, max_points=20000):
    """Scatter of 2-D samples [N, 2], over a heatmap and contours of the density exp(logp_fn) if given.

    logp_fn: maps a numpy array x [M, 2] to log densities [M] (numpy or anything np.asarray accepts).
    lim: plot window: None (from the samples' 0.5-99.5 percentiles plus a margin), a number L ([-L, L]^2),
    (lo, hi) for both axes, or ((xlo, xhi), (ylo, yhi)). Non-finite samples are dropped and counted in the
    title; at most `max_points` are drawn (the first ones).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape [N, 2], got {points.shape}")
    finite = np.all(np.isfinite(points), axis=1)
    dropped = int(np.sum(~finite))
    points = points[finite]
    (x0, x1), (y0, y1) = _limits(points, lim)

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot(1, 1, 1)
    if logp_fn is not None:
        xs = np.linspace(x0, x1, grid_size)
        ys = np.linspace(y0, y1, grid_size)
        xx, yy = np.meshgrid(xs, ys)
        grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
        logp = np.asarray(logp_fn(grid), dtype=np.float64).reshape(xx.shape)
        dens = np.exp(np.where(np.isfinite(logp), logp, -np.inf))
        ax.imshow(dens, origin="lower", extent=(x0, x1, y0, y1), cmap="Blues", aspect="auto", interpolation="bilinear")
        if np.nanmax(dens) > 0:
            ax.contour(
                xx,
                yy,
                dens,
                levels=np.nanmax(dens) * np.array([0.05, 0.25, 0.5, 0.75]),
                colors="navy",
                linewidths=0.5,
                alpha=0.6,
            )
    shown = points[:max_points]
    ax.scatter(shown[:, 0], shown[:, 1], s=1.5, c="crimson", alpha=0.4, linewidths=0, rasterized=True)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal", adjustable="box")
    label = f"{len(points)} samples" + (f" ({dropped} non-finite dropped)" if dropped else "")
    ax.set_title(label if title is None else f"{title}\n{label}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Training curves.

# Evaluation metrics in order of preference: (key, candidate stderr keys, axis label).
_EVAL_KEYS = (
    ("test_bpd", ("test_bpd_stderr",), "test bits/dim"),
    ("test_nats", ("test_nats_stderr",), "test nats"),
    ("test_elbo_nats", ("test_elbo_nats_stderr", "test_nats_stderr"), "test nats"),
)


def _series(records, key, err_keys=()):
    """(steps, values, stderrs) sorted by step for records holding a finite `step` and `key`; the last
    record wins when a step repeats (a run resumed from an earlier checkpoint). stderr is NaN where absent."""
    by_step = {}
    for rec in records:
        step, value = finite_number(rec.get("step")), finite_number(rec.get(key))
        if step is None or value is None:
            continue
        err = next((e for e in (finite_number(rec.get(k)) for k in err_keys) if e is not None), math.nan)
        by_step[step] = (value, err)
    steps = np.array(sorted(by_step), dtype=np.float64)
    values = np.array([by_step[s][0] for s in steps], dtype=np.float64)
    errs = np.array([by_step[s][1] for s in steps], dtype=np.float64)
    return steps, values, errs


def save_training_curves(path, metrics_jsonl_path):
    """Two panels from a metrics.jsonl log: training loss vs step (log scale when all positive), and the test
    metric vs step with a +-2 standard-error band.

    The test metric is test_bpd (with test_bpd_stderr) if logged, else test_nats and/or test_elbo_nats (toy
    data; stderr from test_nats_stderr / test_elbo_nats_stderr). Missing keys, non-numeric values, malformed
    lines and a partially written last line are skipped; an empty panel says so.
    """
    records = read_metrics(metrics_jsonl_path)
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_eval = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)

    steps, loss, _ = _series(records, "loss")
    if len(steps):
        ax_loss.plot(steps, loss, lw=1.0, color="tab:blue")
        if np.all(loss > 0):
            ax_loss.set_yscale("log")
    else:
        ax_loss.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)

    have_bpd = any(finite_number(r.get("test_bpd")) is not None for r in records)
    keys = _EVAL_KEYS[:1] if have_bpd else _EVAL_KEYS[1:]
    ylabel, plotted = None, 0
    for (key, err_keys, label), color in zip(keys, ("tab:red", "tab:green")):
        steps, values, errs = _series(records, key, err_keys)
        if not len(steps):
            continue
        ax_eval.plot(steps, values, "o-", ms=3, lw=1.0, color=color, label=key)
        band = np.isfinite(errs)
        if np.any(band):
            ax_eval.fill_between(
                steps[band], values[band] - 2 * errs[band], values[band] + 2 * errs[band], color=color, alpha=0.2, lw=0
            )
        ylabel, plotted = label, plotted + 1
    if plotted:
        ax_eval.set_ylabel(ylabel)
        ax_eval.legend(fontsize=8, title="± 2 s.e.", title_fontsize=8)
        if have_bpd:
            _, values, errs = _series(records, *keys[0][:2])
            err = f" ± {errs[-1]:.4f}" if np.isfinite(errs[-1]) else ""
            ax_eval.set_title(f"test bpd (last: {values[-1]:.4f}{err})")
        else:
            ax_eval.set_title("test metric")
    else:
        ax_eval.text(0.5, 0.5, "no evaluations logged", ha="center", va="center", transform=ax_eval.transAxes)
        ax_eval.set_title("test metric")
    ax_eval.set_xlabel("step")
    ax_eval.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def save_noise_schedule(path, sde, reference, num=400):
    """gamma(s) = log(sigma^2 / alpha^2) of a model's schedule `sde` (and of its `reference` clock, when that is
    another SDE: a learned schedule's fixed VP) on (0, T] (left), and the importance proposal's density
    gamma'(s) / (gamma(T) - gamma(s_1)) of each (right)."""
    s = np.linspace(sde.T / num, sde.T, num, dtype=np.float32)
    fig = Figure(figsize=(10, 4))
    ax_gamma, ax_density = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    curves = [(sde, "model", "tab:red")] + ([(reference, "reference", "tab:gray")] if reference is not sde else [])
    for model, label, color in curves:
        gamma = np.asarray(model.gamma(s))
        ax_gamma.plot(s, gamma, lw=1.5, color=color, label=f"{label} (gamma(T) = {gamma[-1]:.4g})")
        ax_density.plot(s, np.asarray(model.nll_weight(s)) / (gamma[-1] - gamma[0]), lw=1.5, color=color, label=label)
    ax_gamma.set_ylabel("gamma(s) = log(sigma^2 / alpha^2)")
    ax_density.set_ylabel("gamma'(s), normalised")
    ax_density.set_yscale("log")
    for ax in (ax_gamma, ax_density):
        ax.set_xlabel("s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_samples(info, samples, png_path, npz_path=None, title=None, **meta):
    """Samples drawn from a model of dataset `info` (data.DataInfo): a PNG grid (images; quantized to the
    data's levels) or a scatter over the exact density (2-D toys); with npz_path also an .npz holding
    `samples` and `meta` (values that are None are left out). Atomic writes."""
    if info.levels is None:
        logp = (lambda p: np.asarray(info.exact_logp(p))) if info.exact_logp else None
        save_scatter_2d(png_path, samples, logp_fn=logp, title=title)
    else:
        save_image_grid(png_path, samples, levels=info.levels)
    if npz_path:
        os.makedirs(os.path.dirname(os.path.abspath(npz_path)), exist_ok=True)
        with atomic_path(npz_path) as tmp, open(tmp, "wb") as f:
            np.savez(f, samples=samples, **{k: np.asarray(v) for k, v in meta.items() if v is not None})
