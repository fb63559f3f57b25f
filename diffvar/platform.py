"""Process setup per platform: what is tuned, why, and where it was measured.

Everything here applies on the CPU platform only; on GPUs and TPUs nothing is set. The platform is known
before jax starts from JAX_PLATFORMS (its first entry) or, when that is unset, from whether an accelerator
plugin is installed (jax picks an accelerator over the CPU whenever one is). A CPU-only install with
JAX_PLATFORMS unset therefore counts as CPU; one with a CUDA plugin but no GPU does not, and runs untuned.

One CPU device per core for the U-Nets (cpu_devices): XLA:CPU keeps only about 1.3 of 2 cores busy running one
U-Net program; a batch split over one device per core (data parallel, as over GPUs) keeps both busy (AMD EPYC,
2 cores, benchmarks/measure.py; docs/performance.md has the figures). The cores are those this process may run
on (a sweep trial pinned to its share counts its share); the count is the largest one that divides the batch
sizes (config.validate's rule). The 2-D toys' MLPs are dispatch-bound (no gain measured) and keep jax's
default of one device.

glibc's allocator settings (MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1073741824
MALLOC_TRIM_THRESHOLD_=4294967296) spare the page faults of XLA:CPU's per-call temporary buffer (66 MB for the
digits step; steps/s unchanged). glibc reads them only when a process starts, so they belong in the launcher's
environment (a Makefile target, a job script): nothing here re-executes the program.

DIFFVAR_TUNE=0 turns the device split off; the user's JAX_NUM_CPU_DEVICES or XLA_FLAGS'
--xla_force_host_platform_device_count win.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Iterable, Mapping

SPLIT_MODELS = ("unet",)  # config model.name of the models whose batches are split over the cores


def is_cpu(env: Mapping[str, str] | None = None) -> bool:
    """Whether jax will run on the CPU, known before it starts: JAX_PLATFORMS's first entry when set, else
    whether no accelerator plugin (a `jax_plugins` entry point or module, or libtpu) is installed."""
    env = os.environ if env is None else env
    platforms = env.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not accelerator_installed()


def accelerator_installed() -> bool:
    """Whether jax would find a GPU or TPU plugin (the places jax itself looks)."""
    if importlib.util.find_spec("libtpu") is not None or importlib.metadata.entry_points(group="jax_plugins"):
        return True
    try:
        import jax_plugins
    except ImportError:
        return False
    import pkgutil

    return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a pinned sweep trial counts its share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_devices(model: str | None, batch_sizes: Iterable[int] = ()) -> int:
    """How many CPU devices to make for `model` (config model.name): for SPLIT_MODELS on the CPU, the most
    devices <= usable_cores() that divide every one of `batch_sizes`, one per core; else 0 (jax's default,
    one): other models, other platforms, DIFFVAR_TUNE=0, or a device count the user chose."""
    env = os.environ
    if (
        model not in SPLIT_MODELS
        or env.get("DIFFVAR_TUNE") == "0"
        or not is_cpu()
        or "JAX_NUM_CPU_DEVICES" in env
        or "xla_force_host_platform_device_count" in env.get("XLA_FLAGS", "")
    ):
        return 0
    n = usable_cores()
    while any(b % n for b in batch_sizes):
        n -= 1
    return n


def setup(model: str | None, batch_sizes: Iterable[int] = ()) -> None:
    """Gives jax this platform's settings for `model` (config model.name, or None when unknown) run with
    `batch_sizes` (config training.batch_size, eval.batch_size; none when evaluating, whose batches follow the
    devices). Before anything initialises jax's backends."""
    n = cpu_devices(model, tuple(batch_sizes))
    if n:
        import jax

        jax.config.update("jax_num_cpu_devices", n)
