"""What every entry point in scripts/ shares: the multi-host flags, and one way out for errors a user can fix.

    cli.define_multihost_flags()
    cli.run(main)          # absl app.run; any DiffvarError -> one `error: ...` line on stderr, exit status 1
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

from diffvar.errors import DiffvarError, OptionError


# glibc reads MALLOC_* only when a process starts: without these it maps and unmaps XLA's per-call temporary
# buffer (66 MB for the digits step) on every call. What each setting bought is measured in the README's
# Performance section.
TUNED_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
# XLA:CPU's YNNPACK fusion types per model (--xla_cpu_experimental_ynn_fusion_type): the U-Nets run faster
# without YNN's reductions (GroupNorm's); the MLPs' small matmuls and elementwise loops run faster on XLA's own
# code than on YNN's, so they get none (each measured in the README).
YNN_FUSION_TYPES = {"unet": "-reduce", "mlp": ""}
# XLA:CPU keeps only about 1.3 of 2 cores busy running one U-Net program. Splitting every batch over one CPU
# device per core (data parallel, as over GPUs) keeps both busy. Measured on 2 cores only, hence the cap; the
# MLPs of the 2-D toys are dispatch-bound: no gain measured (within the noise), so they keep one device.
MAX_CPU_DEVICES = 2
SPLIT_MODELS = ("unet",)


def tune_process():
    """Re-executes this program once with TUNED_ENV added to its environment (values the user set win); then
    use_tuning(model) adds the model's settings. DIFFVAR_TUNE=0 turns all of it off. Call it first thing in a
    script, before jax is imported."""
    env = dict(os.environ)
    if env.get("DIFFVAR_TUNE") in ("0", "done"):
        return
    for key, value in TUNED_ENV.items():
        env.setdefault(key, value)
    env["DIFFVAR_TUNE"] = "done"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def define_multihost_flags():
    """--coordinator_address, --num_processes, --process_id: one process per host (jax.distributed)."""
    flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0 (jax.distributed).")
    flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
    flags.DEFINE_integer("process_id", 0, "Multi-host: this process's index.")


def cpu_devices(model):
    """How many CPU devices a tuned process makes for a `model` (config model.name): for SPLIT_MODELS one per
    core it may run on, at most MAX_CPU_DEVICES; else 0 (jax's default, one), as when untuned or when the user
    chose (JAX_NUM_CPU_DEVICES, or XLA_FLAGS' --xla_force_host_platform_device_count). A batch is then split
    over them: batch sizes must divide."""
    env = os.environ
    if model not in SPLIT_MODELS or env.get("DIFFVAR_TUNE") != "done" or "JAX_NUM_CPU_DEVICES" in env or \
            "xla_force_host_platform_device_count" in env.get("XLA_FLAGS", ""):
        return 0
    return min(len(os.sched_getaffinity(0)), MAX_CPU_DEVICES)


def use_xla_flags(model):
    """In a tuned process, before anything initialises jax: XLA_FLAGS gets the YNN fusion types of `model`
    (config model.name), unless the user set them."""
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("DIFFVAR_TUNE") == "done" and model in YNN_FUSION_TYPES and \
            "xla_cpu_experimental_ynn_fusion_type" not in xla_flags:
        flag = f"--xla_cpu_experimental_ynn_fusion_type={YNN_FUSION_TYPES[model]}"
        os.environ["XLA_FLAGS"] = f"{xla_flags} {flag}".strip()


def use_cpu_devices(model):
    """Makes jax create cpu_devices(model) CPU devices (when not 0). Before anything initialises jax."""
    import jax  # not before tune_process() has run
    n = cpu_devices(model)
    if n:
        jax.config.update("jax_num_cpu_devices", n)


def model_of(workdir):
    """model.name in workdir/config.json, or None when it cannot be read (the program reports that later)."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            return json.load(f)["model"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def use_tuning(model):
    """use_xla_flags(model) and use_cpu_devices(model): what a tuned process gives jax for `model`."""
    use_xla_flags(model)
    use_cpu_devices(model)


def initialize(model):
    """use_tuning(model), then joins the multi-host run the flags describe (nothing to do without
    --coordinator_address). Before anything else uses jax."""
    use_tuning(model)
    from diffvar import distributed
    f = flags.FLAGS
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)


def fail(message):
    """One line on stderr and exit status 1. os._exit: a failed orbax read leaves coroutines behind that
    would print tracebacks while the interpreter shuts down."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(2, f"error: {message}\n".encode())  # one write: no other thread's output inside the line
    os._exit(1)


def _parse_flags(argv):
    """absl's flag parsing, with every error as one `error:` line: the --config file and the keys of its
    --config.* overrides are checked first (diffvar.config), then absl parses (wrong value types)."""
    from diffvar import config as config_lib
    try:
        paths = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
        if paths and "config" in flags.FLAGS:
            base = config_lib.load_file(paths[-1])
            for arg in argv[1:]:
                if arg.startswith("--config.") or arg.startswith("--noconfig."):
                    key = arg.split("=", 1)[0].removeprefix("--no").removeprefix("--").removeprefix("config.")
                    config_lib.check_key(base, key, arg)
        return flags.FLAGS(argv)
    except DiffvarError as e:
        fail(e)
    except flags.Error as e:
        fail(" ".join(str(e).split()))


def run(main):
    """absl's app.run(main) with INFO logs off, positional arguments refused, and every DiffvarError turned
    into one `error: ...` line and exit status 1 (other exceptions keep their traceback: they are bugs)."""
    def wrapped(argv):
        try:
            if len(argv) > 1:
                raise OptionError(f"unexpected arguments {argv[1:]}")
            main()
        except DiffvarError as e:
            fail(e)

    logging.set_verbosity(logging.ERROR)  # orbax's and absl's INFO/WARNING lines are not news
    app.run(wrapped, flags_parser=_parse_flags)
