"""Shared test helpers: tiny configs, running a script as a user would, the one statistical assertion, and the
exact prior of a Gaussian mixture."""

import functools
import os
import subprocess
import sys

from diffvar import config as config_lib, config_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def load_benchmark(name):
    """benchmarks/<name>.py as a module (benchmarks/ is not a package), loaded once per process (its absl flags
    may be defined only once)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(name):
    """configs/<name>.py's get_config(), loaded by path as scripts/train.py's --config does."""
    return config_files.load_file(os.path.join(ROOT, "configs", f"{name}.py"))


def tiny_config(**overrides):
    """configs/gmm2d.py shrunk to a run of seconds (40 steps, 10 per call, a 2048-example evaluation);
    overrides are {"section.key": value}."""
    c = load_config("gmm2d")
    c.model.hidden = 32
    c.training.num_steps = 40
    c.optim.warmup_steps = 10
    c.optim.schedule = "constant"  # the cosine schedule depends on num_steps, which resume tests change
    c.training.steps_per_call = 10
    c.training.log_every = 10
    c.training.ckpt_every = 10
    c.training.keep = 2
    c.eval.every = 20
    c.eval.repeats = 1
    c.eval.draws = 1
    c.eval.batch_size = 1024
    c.eval.max_examples = 2048
    c.sampling.num = 100
    c.sampling.steps = 20
    for key, value in overrides.items():
        section, name = key.split(".")
        c[section][name] = value
    config_lib.validate(c)
    return c


# The command-line twin of tiny_config (eval only at the end, on 1024 examples).
TINY_FLAGS = (
    "--config.model.hidden=32",
    "--config.training.steps_per_call=10",
    "--config.optim.warmup_steps=10",
    "--config.training.log_every=10",
    "--config.training.ckpt_every=10",
    "--config.eval.every=0",
    "--config.eval.repeats=1",
    "--config.eval.draws=1",
    "--config.eval.batch_size=1024",
    "--config.eval.max_examples=1024",
    "--config.sampling.num=16",
    "--config.sampling.steps=5",
)


def run_script(name, *flags, env=None, wait=True, timeout=600):
    """Runs scripts/<name>.py with `flags` in a fresh process (JAX on the CPU; `env` added to this process's
    environment, a None value removing a key); a CompletedProcess, or a Popen with stdout piped (text,
    stderr merged) when wait=False."""
    cmd = [sys.executable, os.path.join(ROOT, "scripts", f"{name}.py"), *flags]
    full_env = {k: v for k, v in dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})).items() if v is not None}
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def train_script(workdir, *flags, config="gmm2d", env=None, wait=True):
    """scripts/train.py on configs/<config>.py with TINY_FLAGS (gmm2d) and `flags` after them."""
    tiny = TINY_FLAGS if config == "gmm2d" else ()
    return run_script(
        "train", f"--config={ROOT}/configs/{config}.py", f"--workdir={workdir}", *tiny, *flags, env=env, wait=wait
    )


def assert_one_error_line(r, *fragments):
    """A script that failed as a user error should: exit 1, one `error: ...` line on stderr, no traceback."""
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def within(diff, k=4.0, slack=0.0):
    """|mean| <= k standard errors + slack, for a {"mean", "stderr"} estimate of a difference that is 0 in
    expectation (slack: a stated bias bound, such as the prior mismatch)."""
    return abs(diff["mean"]) <= k * diff["stderr"] + slack


def start_training(workdir, *flags, until="step 10/", **kw):
    """train_script(..., wait=False) once its output shows `until` (a Popen, with that line as proc.matched; the
    rest of stdout unread)."""
    proc = train_script(workdir, *flags, wait=False, **kw)
    proc.matched = None
    for line in proc.stdout:
        if until in line:
            proc.matched = line
            break
    return proc


def params_at(workdir, step=None):
    """(step, params as numpy) of the checkpoint at `step` (default: the latest) of a training workdir."""
    import jax
    import numpy as np

    from diffvar import checkpoints, distributed, experiment

    exp, _ = checkpoints.load_experiment(workdir)  # onto this process's devices, however many saved it
    abstract = experiment.abstract_state(exp, distributed.replicated(distributed.make_mesh()))
    mngr = checkpoints.manager(workdir, read_only=True)
    step = mngr.latest_step() if step is None else step
    state = checkpoints.restore(mngr, step, abstract, items=("state",))["state"]
    return step, jax.tree.map(np.asarray, state.params)


def assert_same_params(a, b):
    """Bitwise equality of two parameter trees."""
    import jax
    import numpy as np

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def losses(workdir):
    """{step: loss} of a workdir's metrics.jsonl."""
    import json

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def exact_prior(mix, sde):
    """log p_T of the mixture's own marginal at T (no prior mismatch), as ode_logp's prior_logp; z [B, ...] -> [B]."""
    import jax.numpy as jnp

    return lambda z: mix.marginal_logp(sde, z.reshape(z.shape[0], -1), jnp.full((z.shape[0],), sde.T))
