"""Process setup per platform: what is tuned, why, and where it was measured.

Everything here applies on the CPU platform only; on GPUs and TPUs nothing is set. The platform is known
before jax starts from JAX_PLATFORMS (its first entry) or, when that is unset, from whether an accelerator
plugin is installed (jax picks an accelerator over the CPU whenever one is). A CPU-only install with
JAX_PLATFORMS unset therefore counts as CPU; one with a CUDA plugin but no GPU does not, and runs untuned.

On the CPU (2 cores, AMD EPYC, measured with benchmarks/measure.py; docs/performance.md has the figures):

- glibc's allocator settings (ALLOCATOR_ENV). glibc reads MALLOC_* only when a process starts, so
  tune_process() re-executes the program once with them. Without them it maps and unmaps XLA's per-call
  temporary buffer (66 MB for the digits step) on every call: 1.28 M minor page faults per run, 0.33 M with.
- One CPU device per core for the U-Nets (cpu_devices). XLA:CPU keeps only about 1.3 of 2 cores busy running
  one U-Net program; a batch split over one device per core (data parallel, as over GPUs) keeps both busy.
  The 2-D toys' MLPs are dispatch-bound (no gain measured) and keep jax's default of one device. Measured on
  2 cores only, hence MAX_CPU_DEVICES.

XLA gets no flags from here: the YNNPACK fusion types once chosen per model were measured for hand-written
CPU layers that the models no longer have.

DIFFVAR_TUNE=0 turns all of it off; values the user set (MALLOC_*, JAX_NUM_CPU_DEVICES, XLA_FLAGS'
--xla_force_host_platform_device_count) win.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys

ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "1073741824",
                 "MALLOC_TRIM_THRESHOLD_": "4294967296"}
MAX_CPU_DEVICES = 2
SPLIT_MODELS = ("unet",)  # config model.name of the models whose batches are split over the cores


def is_cpu(env=None):
    """Whether jax will run on the CPU, known before it starts: JAX_PLATFORMS's first entry when set, else
    whether no accelerator plugin (a `jax_plugins` entry point or module, or libtpu) is installed."""
    env = os.environ if env is None else env
    platforms = env.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not accelerator_installed()


def accelerator_installed():
    """Whether jax would find a GPU or TPU plugin (the places jax itself looks)."""
    if importlib.util.find_spec("libtpu") is not None or importlib.metadata.entry_points(group="jax_plugins"):
        return True
    try:
        import jax_plugins
    except ImportError:
        return False
    import pkgutil
    return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def tuned():
    """Whether this process runs with the CPU settings (tune_process() re-executed it)."""
    return os.environ.get("DIFFVAR_TUNE") == "done"


def tune_process():
    """On the CPU: re-executes this program once with ALLOCATOR_ENV added to its environment (values the user
    set win). Nothing on other platforms, with DIFFVAR_TUNE=0, or once done. First thing in a script, before
    jax is imported."""
    if os.environ.get("DIFFVAR_TUNE") in ("0", "done") or not is_cpu():
        return
    env = dict(os.environ, DIFFVAR_TUNE="done")
    for key, value in ALLOCATOR_ENV.items():
        env.setdefault(key, value)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def cpu_devices(model):
    """How many CPU devices a tuned process makes for `model` (config model.name): for SPLIT_MODELS one per
    core it may run on, at most MAX_CPU_DEVICES; else 0 (jax's default, one), as when untuned or when the
    user chose. A batch is then split over them: batch sizes must divide."""
    env = os.environ
    if model not in SPLIT_MODELS or not tuned() or "JAX_NUM_CPU_DEVICES" in env or \
            "xla_force_host_platform_device_count" in env.get("XLA_FLAGS", ""):
        return 0
    return min(len(os.sched_getaffinity(0)), MAX_CPU_DEVICES)


def setup(model):
    """Gives jax this platform's settings for `model` (config model.name, or None when unknown). Before
    anything initialises jax's backends."""
    n = cpu_devices(model)
    if n:
        import jax  # not before tune_process() has run
        jax.config.update("jax_num_cpu_devices", n)
