"""The sweep runner: every trial of a config's sweep as its own trainer process, resumable.

    declared = load(config, "configs/gmm2d.py", "runs/sweep")  # the trials, checked; config: its get_config()
    run(declared, LocalExecutor(parallel=2))                     # or SlurmExecutor(params)

load() reads and checks the sweep; run() plans (what is finished, what to run), hands the trials to an
Executor and writes the results; report() only rebuilds the results. Each trial runs in DIR/<name from its
overrides> with command.txt, trial.json (the runner's record) and train.log (the trainer's output). The
trainer reports through status.json; exit status 0 is finished or interrupted, 1 with an `error: ...` line a
deterministic failure (not retried), anything else a crash (retried up to max_retries times, then recorded
failed with kind "crash").
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import shlex
import signal
import socket
import sys
import time
import types
from collections.abc import Callable

from diffvar import processes
from diffvar.errors import ConfigError, OptionError
from diffvar.files import atomic_path
from diffvar.sweep import declarations, results, store

TRAINER = (sys.executable, "-m", "diffvar.commands.train")  # the installed package's trainer: no source tree


@dataclasses.dataclass(frozen=True)
class Trial:
    """One point of a sweep: its directory name, its overrides {config key: value} and its workdir."""

    name: str
    overrides: dict
    workdir: str

    @property
    def overrides_text(self):
        """{key: value as the trainer's --config.key= flag spells it}."""
        return {k: declarations.cli_value(v) for k, v in self.overrides.items()}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A checked sweep: its config file, the command line's base overrides, its directory and its trials."""

    source: str  # the config file as given, for messages
    config_path: str  # the same, absolute
    name: str | None  # the sweep's name in get_hyper (None: the default one)
    base: dict  # {key: value} of every trial, before the trial's own
    workdir: str
    trials: tuple  # of Trial, in declaration order
    trainer: tuple = TRAINER  # the trainer's argv prefix

    def args(self, trial):
        """The trainer's arguments for `trial`: config, workdir, the base overrides, then the trial's."""
        base = {k: v for k, v in self.base.items() if k not in trial.overrides}
        flags = [f"--config.{k}={declarations.cli_value(v)}" for d in (base, trial.overrides) for k, v in d.items()]
        return [f"--config={self.config_path}", f"--workdir={trial.workdir}", *flags]

    def command(self, trial):
        return [*self.trainer, *self.args(trial)]


def load(config, config_path, workdir, name=None, base=None, check_config=None, trainer=TRAINER):
    """The sweep `name` (None: the default) that the config file at `config_path` declares in get_hyper.

    config: the file's base ConfigDict with `base` ({key: value}, the command line's --config.* overrides)
    applied; check_config: optional callable validating each trial's full config. Raises ConfigError, before
    anything runs, for an unknown key, a wrong type, a trial that check_config rejects or two trials sharing
    a directory name."""
    from diffvar.config_files import load_module  # here: the Slurm jobs import this module and need no jax

    module = types.SimpleNamespace(**load_module(config_path))  # for get_hyper; get_config ran already
    overrides = declarations.load(module, config, name, source=config_path)
    for trial in overrides if check_config else ():
        _check_trial(check_config, declarations.apply(config, trial), declarations.trial_name(trial))
    workdir = os.path.abspath(workdir)
    trials = tuple(
        Trial(declarations.trial_name(o), o, os.path.join(workdir, declarations.trial_name(o))) for o in overrides
    )
    if len({t.name for t in trials}) != len(trials):
        raise ConfigError("two trials map to the same directory name; make their values differ")
    base = {declarations.normalize_key(k): v for k, v in (base or {}).items()}
    return Sweep(config_path, os.path.abspath(config_path), name, base, workdir, trials, tuple(trainer))


def _check_trial(check_config, config, name):
    try:
        check_config(config)
    except Exception as e:  # noqa: BLE001 -- a checker that crashes on this config is also a config error
        what = str(e) if isinstance(e, ConfigError) else f"the config check failed: {type(e).__name__}: {e}"
        raise ConfigError(f"trial {name}: {what}") from None


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """'i/n' -> (i, n) with 0 <= i < n; None or '' -> None."""
    if not shard:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise OptionError(f"--shard={shard!r} must be i/n with 0 <= i < n, e.g. --shard=0/4")
    return int(m[1]), int(m[2])


# ----------------------------------------------------------------------------------------------
# Planning, running and reporting.


Planned = collections.namedtuple("Planned", "index trial state run")


def plan(sweep: Sweep, shard: tuple[int, int] | None = None, retry_failed: bool = False) -> list[Planned]:
    """This runner's trials (every n-th with shard=(i, n)) as Planned(index, trial, state, run): finished
    trials and deterministic failures are skipped, and so are trials running elsewhere unless retry_failed.
    Raises OptionError when a trial's workdir was run with another command."""
    planned = []
    for index, trial in enumerate(sweep.trials):
        if shard is not None and index % shard[1] != shard[0]:
            continue
        old = store.read_json(os.path.join(trial.workdir, store.TRIAL_FILE))
        if old and old.get("args") and old["args"] != sweep.args(trial):
            changed = sorted(set(old["args"]) ^ set(sweep.args(trial)))
            raise OptionError(
                f"{trial.workdir} was run with a different command (differs in {' '.join(changed)}); "
                "use a new --workdir for a different base config"
            )
        state = store.read_trial(trial.workdir, trial.name, trial.overrides_text)
        foreign = state["status"] == "running" and state["host"] != socket.gethostname()
        skip = state["status"] == "finished" or (state["status"] == "running" and not foreign)
        skip = skip or (state["status"] == "failed" and state["kind"] != "crash" and not retry_failed)
        skip = skip or (foreign and not retry_failed)
        planned.append(Planned(index, trial, state, not skip))
    return planned


def describe(sweep, planned, shard, commands=False):
    """The plan's lines: a summary, then each trial's workdir and action (and its command with commands)."""
    todo, skipped = [p for p in planned if p.run], [p.state for p in planned if not p.run]
    where = f" (shard {shard[0]}/{shard[1]}: {len(planned)} of {len(sweep.trials)})" if shard else ""
    why = ", ".join(f"{n} {s}" for s, n in store.counts(skipped).items() if n)
    lines = [
        f"sweep {sweep.name or '(default)'} of {sweep.source}: {len(sweep.trials)} trials{where}, "
        f"{len(todo)} to run" + (f", {len(skipped)} skipped ({why})" if skipped else "")
    ]
    for p in planned:
        lines.append(f"  [{p.index}] {p.trial.workdir}: {'run' if p.run else 'skip (' + p.state['status'] + ')'}")
        if commands:
            lines.append(f"      {shlex.join(sweep.command(p.trial))}")
    return lines


def prepare(sweep, todo, executor):
    """Writes sweep.json, and for each trial to run its command.txt and trial.json (status pending, or
    interrupted when it was recorded running by a runner that is gone)."""
    os.makedirs(sweep.workdir, exist_ok=True)
    store.write_manifest(
        sweep.workdir,
        {
            "config": sweep.config_path,
            "sweep": sweep.name,
            "base_overrides": {k: declarations.cli_value(v) for k, v in sweep.base.items()},
            "trials": [{"name": t.name, "overrides_text": t.overrides_text} for t in sweep.trials],
        },
    )
    for trial in todo:
        os.makedirs(trial.workdir, exist_ok=True)
        argv = sweep.command(trial)
        with atomic_path(os.path.join(trial.workdir, "command.txt")) as tmp, open(tmp, "w") as f:
            f.write(shlex.join(argv) + "\n")
        prior = (store.read_json(os.path.join(trial.workdir, store.TRIAL_FILE)) or {}).get("status", "pending")
        store.record(
            trial.workdir,
            name=trial.name,
            overrides_text=trial.overrides_text,
            args=sweep.args(trial),
            argv=argv,
            status="interrupted" if prior == "running" else prior,
            executor=executor.name,
        )


def run(
    sweep: Sweep,
    executor,
    shard: tuple[int, int] | None = None,
    retry_failed: bool = False,
    dry_run: bool = False,
    out: Callable[[str], None] = print,
) -> list[dict]:
    """Runs (or resumes) this runner's trials of `sweep` with `executor` and writes the results; returns the
    result rows (dicts as store.read_trial). dry_run: only print the plan with each trial's command."""
    planned = plan(sweep, shard, retry_failed)
    for line in describe(sweep, planned, shard, commands=dry_run):
        out(line)
    if dry_run:
        return []
    todo = [p.trial for p in planned if p.run]
    prepare(sweep, todo, executor)
    monitor = Monitor(sweep.workdir, {p.trial.name for p in planned}, out)
    if todo:
        with processes.Stop((signal.SIGTERM, signal.SIGINT)) as stop:
            executor.run([(t, sweep.command(t)) for t in todo], stop, monitor)
    rows, _ = results.write(sweep.workdir)
    monitor.show(executor.slots)
    out(f"wrote {os.path.join(sweep.workdir, 'results.md')}, results.csv, results.png")
    return rows


def report(workdir: str, out: Callable[[str], None] = print) -> list[dict]:
    """Rebuilds results.csv, .md and .png of the sweep in `workdir` from its trial workdirs; returns the rows."""
    if not os.path.exists(os.path.join(workdir, store.MANIFEST)):
        raise OptionError(f"--report: {workdir} holds no sweep (no {store.MANIFEST})")
    rows, _ = results.write(workdir)
    out(store.progress_line(rows, time.time(), 1, []))
    out(f"wrote {os.path.join(workdir, 'results.md')}, results.csv, results.png")
    return rows


class Monitor:
    """The progress line of this runner's trials, printed when the counts change and at least each minute,
    with an ETA from the wall times of the trials that finished here."""

    def __init__(self, workdir, names, out=print):
        self.workdir, self.names, self.out = workdir, names, out
        self.t_start, self.durations, self.shown, self.t_shown = time.time(), [], "", 0.0

    def show(self, slots):
        rows = [r for r in store.collect(self.workdir)[0] if r["name"] in self.names]
        line = store.progress_line(rows, self.t_start, slots, self.durations)
        if line.split(" | ")[0] != self.shown.split(" | ")[0] or time.time() - self.t_shown > 60:
            self.out(line)
            self.shown, self.t_shown = line, time.time()

    def finished(self, seconds):
        self.durations.append(seconds)

    def write(self):
        results.write(self.workdir)
