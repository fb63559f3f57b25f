"""The only module that touches orbax: open, save, restore, resolve 'latest' | 'best' | N, plausibility checks.

A checkpoint at step N is workdir/checkpoints/N with three items: state (the TrainState), data (the training
iterator's state, JSON) and meta (JSON: step, unit). A checkpoint is written before its step's evaluation (a run
stopped during the evaluation keeps its last steps); record_metric then attaches the test metric as orbax's metric
of the step, so orbax keeps the best checkpoint and names it (best_fn, best_step()). Saves are synchronous and
atomic (orbax writes a temporary directory and renames it). The trainer opens the manager read-write; evaluation
and sampling open it read-only and never write under checkpoints/.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from diffvar import config_files, distributed, experiment
from diffvar.errors import CheckpointError, ConfigError, DataNotPreparedError, OptionError, WorkdirError
from diffvar.files import write_json_atomic

ITEMS = ("state", "data", "meta")
MAX_PARAM_MAGNITUDE = 1e8  # no trained network has weights this large; random bytes read as float32 do
MAX_STATE_MAGNITUDE = 1e30  # optimizer moments: Adam's second moment is a squared gradient, and the learned
# schedule's variance gradient is not clipped (9e13 written by a dsm_lw run)


def directory(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    """orbax CheckpointManager over workdir/checkpoints: keeps the latest `keep` plus the best by the test
    metric (lower is better)."""
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [
            ocp.checkpoint_managers.LatestN(n=keep),
            ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m["test_metric"], reverse=True, n=1, keep_checkpoints_without_metrics=False
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=lambda m: m["test_metric"],
        best_mode="min",
        create=not read_only,
        enable_async_checkpointing=False,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
    )  # a save cut short by a kill
    return ocp.CheckpointManager(directory(workdir), item_names=ITEMS, options=options)


def save(mngr: ocp.CheckpointManager, state, data_state: dict, meta: dict) -> None:
    """Writes (state, data iterator state, meta) at step state.step; returns when it is on disk."""
    mngr.save(
        int(state.step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)
        ),
        force=True,
    )
    mngr.wait_until_finished()


def record_metric(mngr: ocp.CheckpointManager, step: int, value: float) -> None:
    """Attaches the test metric `value` to the saved checkpoint at `step`: orbax's metrics item
    (<step>/metrics/metrics, the JSON orbax itself writes for save(metrics=...)), written atomically, then
    re-read by the manager, so best_step() and the preservation policy see it."""
    folder = os.path.join(str(mngr.directory), str(step), "metrics")
    os.makedirs(folder, exist_ok=True)
    write_json_atomic(os.path.join(folder, "metrics"), {"test_metric": float(value)})
    mngr.reload()


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state=None, items: Sequence[str] = ITEMS) -> dict:
    """{item: value} of the checkpoint at `step`; the state takes the shapes and shardings of abstract_state
    (experiment.abstract_state: on this process's devices, however many wrote it; None: as saved, which
    fails unless the devices are the same)."""
    args = {
        "state": ocp.args.StandardRestore(abstract_state),
        "data": ocp.args.JsonRestore(),
        "meta": ocp.args.JsonRestore(),
    }
    return dict(mngr.restore(step, args=ocp.args.Composite(**{k: args[k] for k in items})))


def parse_step(spec: str | int) -> str | int:
    """'latest' | 'best' | an integer step (int or decimal string) -> 'latest' | 'best' | int; else OptionError."""
    if isinstance(spec, str) and spec.strip().lower() in ("latest", "best"):
        return spec.strip().lower()
    try:
        step = int(spec)
    except (TypeError, ValueError):
        raise OptionError(f"--checkpoint_step={spec!r} must be a step number, 'latest' or 'best'") from None
    if step < 0:
        raise OptionError(f"--checkpoint_step={spec!r} must be a step number >= 0, 'latest' or 'best'")
    return step


def resolve_step(mngr: ocp.CheckpointManager, spec: str | int, ckpt_dir: str) -> int:
    """The step `spec` ('latest' | 'best' | int) names among the checkpoints, or CheckpointError."""
    steps = sorted(mngr.all_steps())
    if not steps:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}: nothing to evaluate (train first, or check --workdir)")
    spec = parse_step(spec)
    if spec == "latest":
        return steps[-1]
    if spec == "best":
        best = mngr.best_step()
        if best is None:
            raise CheckpointError(
                f"no checkpoint in {ckpt_dir} has a test metric, so there is no 'best' one; "
                f"use --checkpoint_step=latest or one of: {_steps_list(steps)}"
            )
        return best
    if spec not in steps:
        raise CheckpointError(f"no checkpoint at step {spec} in {ckpt_dir}; available steps: {_steps_list(steps)}")
    return spec


def load_experiment(workdir: str) -> tuple[experiment.Experiment, list]:
    """(Experiment, config keys filled with defaults) of a training workdir, built for one device (the run's
    batch sizes need not divide this machine's device count). WorkdirError when it cannot be built."""
    config, filled = config_files.from_workdir(workdir)
    try:
        exp = experiment.build(config, 1)
    except (ConfigError, DataNotPreparedError) as e:
        raise WorkdirError(f"the config in {os.path.join(workdir, 'config.json')} cannot be built: {e}") from None
    return exp, filled


def read(
    mngr: ocp.CheckpointManager, step: int, abstract_state, items: Sequence[str] = ITEMS
) -> tuple[dict | None, str | None]:
    """({item: value}, None) of the checkpoint at `step`, or (None, why it cannot be used): unreadable (a
    truncated or missing file, another model's shapes) or implausible values (overwritten bytes)."""
    try:
        out = restore(mngr, step, abstract_state, items)
    except Exception as e:  # noqa: BLE001 - any failure to read is reported the same way
        gc.collect()  # orbax's abandoned reads report now, not at random (cli.quiet_orbax_abandoned_reads)
        return None, (f"cannot be read (corrupt, incomplete, or written for another model config): {_root_message(e)}")
    problem = implausible(out["state"]) if "state" in out else None
    return (None, f"is corrupt: {problem}") if problem else (out, None)


def newest_usable(mngr, abstract_state, set_aside, relist, items=ITEMS):
    """(step, {item: value}) of the newest checkpoint read() can use, or (None, None) when there is none.

    Newest first; one that cannot be used goes to set_aside(step, why) and the one before it is tried. One that
    vanishes while it is read (a trainer running in this workdir removed an old step) makes relist(mngr) list
    the steps again."""
    tried = set()
    for _ in range(10):
        for step in sorted(set(mngr.all_steps()) - tried, reverse=True):
            out, problem = read(mngr, step, abstract_state, items)
            if out is not None:
                return int(step), out
            if not os.path.isdir(os.path.join(str(mngr.directory), str(step))):
                break  # removed while we read it: list the steps again
            tried.add(step)
            set_aside(step, problem)
        else:
            return None, None
        mngr = relist(mngr)
    return None, None


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, warn: Callable[[str], None]) -> dict | None:
    """The trainer's newest usable checkpoint as {item: value}, or None when there is none. One that cannot be
    used is moved aside to checkpoints/<step>.unusable (never deleted) with warn(message) naming it."""

    def move_aside(step, problem):
        path = os.path.join(str(mngr.directory), str(step))
        if jax.process_index() == 0:
            os.replace(path, f"{path}.unusable")
        warn(
            f"warning: the checkpoint at step {step} in {mngr.directory} {problem}; moved it to "
            f"{path}.unusable and trying the one before it"
        )
        mngr.reload()

    def reload(m):
        m.reload()
        return m

    return newest_usable(mngr, abstract_state, move_aside, reload)[1]


def restore_params(
    workdir: str,
    step: str | int = "latest",
    mesh: jax.sharding.Mesh | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[experiment.Experiment, dict, int, list]:
    """(exp, EMA params replicated on `mesh`, step, filled keys) of a training workdir, opened read-only.

    'latest' is the newest usable checkpoint: one that cannot be read or holds implausible values (see
    implausible()) is skipped with warn(message). Raises WorkdirError / CheckpointError (one line) for a
    workdir without config.json or checkpoints, a missing step (listing the available ones), and a named
    step ('best' or N) that cannot be used.
    """
    spec = parse_step(step)
    exp, filled = load_experiment(workdir)
    ckpt_dir = directory(workdir)
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(
            f"no checkpoint in {ckpt_dir}: the directory does not exist (train first, or check --workdir)"
        )
    abstract = experiment.abstract_state(exp, distributed.replicated(mesh or distributed.make_mesh()))
    mngr = _listed(workdir)
    try:
        step = resolve_step(mngr, spec, ckpt_dir)
        if spec != "latest":
            out, problem = read(mngr, step, abstract, items=("state",))
            if out is None:
                raise CheckpointError(f"the checkpoint at step {step} in {ckpt_dir} {problem}")
            return exp, out["state"].ema_params, int(step), filled
        skipped = []

        def skip(step, problem):
            skipped.append(step)
            (warn or print)(f"warning: the checkpoint at step {step} in {ckpt_dir} {problem}; skipping it")

        step, out = newest_usable(mngr, abstract, skip, lambda m: _listed(workdir, m), items=("state",))
        if out is not None:
            return exp, out["state"].ema_params, step, filled
        raise CheckpointError(
            f"no usable checkpoint in {ckpt_dir}: every one is corrupt or unreadable"
            + (f" (steps {_steps_list(sorted(skipped))})" if skipped else "")
        )
    finally:
        mngr.close()


def _listed(workdir, mngr=None):
    """A read-only manager that has listed the steps (a new one, or `mngr` reloaded), retried while a trainer
    running in this workdir removes a step between orbax's listing of the directory and its stat of it."""
    for _ in range(50):
        try:
            if mngr is None:
                mngr = manager(workdir, read_only=True)
            else:
                mngr.reload()
            mngr.all_steps()
            return mngr
        except (FileNotFoundError, NotADirectoryError):  # orbax's stat of a step, or its exists() then is_dir()
            time.sleep(0.02)
    raise CheckpointError(
        f"cannot list the checkpoints in {directory(workdir)}: steps keep disappearing while they are listed"
    )


def implausible(state) -> str | None:
    """A description of non-finite values in a restored state, or of parameters too large to be trained
    weights (what overwritten bytes look like: orbax stores no checksums); None when it looks sound."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        a = np.asarray(leaf)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        name = jax.tree_util.keystr(path)
        if not np.all(np.isfinite(a)):
            return f"{name} holds non-finite values"
        limit = MAX_PARAM_MAGNITUDE if "params" in name else MAX_STATE_MAGNITUDE
        if a.size and np.max(np.abs(a)) > limit:
            return f"{name} holds values as large as {np.max(np.abs(a)):.3g} (> {limit:g}: not what training writes)"
    return None


def _steps_list(steps, limit=20):
    if len(steps) <= limit:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[: limit // 2])) + ", ..., " + ", ".join(map(str, steps[-limit // 2 :]))


def _first_line(e):
    text = (str(e).strip().splitlines() or [""])[0] or type(e).__name__
    text = text.split(" See full TensorStore details")[0]
    return text if len(text) <= 400 else text[:397] + "..."


def _root_message(e):
    """The most specific line of an exception chain (TensorStore's reason rather than orbax's wrapper)."""
    chain = [e]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return _first_line(chain[-1]) if str(chain[-1]).strip() else _first_line(e)
