"""What a run tells the user and leaves behind: progress lines with rate and ETA, metrics.jsonl + TensorBoard
(and reading it back), and status.json (why the run stopped, for people and for the sweep runner).

Only process 0 prints and writes: say, MetricsLog and Status do nothing elsewhere. Importing this module imports no
jax (the sweep runner's Slurm jobs read metrics.jsonl with it).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import socket
import time

from diffvar.errors import DiffvarError
from diffvar.files import atomic_path, write_json_atomic

UNITS = ("bpd", "nats")  # the units of a test metric (Experiment.unit): bits/dim for images, nats for the toys


def metric_key(unit: str) -> str:
    """The metrics.jsonl key of the test-set metric in `unit` ("test_bpd", "test_nats"); + "_stderr": its s.e."""
    return f"test_{unit}"


def read_metrics(metrics_jsonl_path: str) -> list[dict]:
    """Records (dicts) of a metrics.jsonl file, skipping blank, malformed or partial lines and non-objects."""
    records = []
    with open(metrics_jsonl_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def finite_number(v) -> float | None:
    """v (a number or a numeric string) as a finite float, else None (booleans, NaN, inf, other text)."""
    if isinstance(v, bool):
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def metric_of(record: dict) -> tuple[str, float, float | None] | None:
    """(unit, value, stderr or None) of the test metric a record (a metrics.jsonl line, status.json's result)
    holds, or None when it holds none."""
    for unit in UNITS:
        value = finite_number(record.get(metric_key(unit)))
        if value is not None:
            return unit, value, finite_number(record.get(f"{metric_key(unit)}_stderr"))
    return None


def is_chief() -> bool:
    """Process 0 of the run, the one that prints and writes (jax imported here, not with this module)."""
    from diffvar import distributed

    return distributed.is_chief()


def say(fmt: str, *args) -> None:
    """One timestamped progress line on stdout, from process 0 (absl/orbax INFO logs stay at WARNING)."""
    if is_chief():
        print(time.strftime("%H:%M:%S ") + (fmt % args if args else fmt), flush=True)


def fmt_time(seconds):
    """H:MM:SS."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Rate and ETA of work counted in units (steps, batches) towards `total`, and rate-limited lines.

    rate() counts the units and seconds since the last mark(), less the time spent inside `with paused():`
    (an evaluation inside a training loop does not lower the training rate).
    """

    def __init__(self, total, done=0, every=0.0, enabled=True):
        self.total, self.enabled, self.every = total, enabled, every
        self.start = time.time()
        self.done = done
        self.last_line = -math.inf
        self.mark()

    def update(self, done):
        self.done = done

    def mark(self):
        self.t_mark, self.done_mark, self.excluded = time.time(), self.done, 0.0

    @contextlib.contextmanager
    def paused(self):
        start = time.time()
        try:
            yield
        finally:
            self.excluded += time.time() - start

    def rate(self):
        """Units per second since the last mark(), paused time left out."""
        return (self.done - self.done_mark) / max(time.time() - self.t_mark - self.excluded, 1e-9)

    def eta(self, deadline=None):
        """Seconds left at the current rate (no later than `deadline`, a time.time() value)."""
        rate = self.rate()
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        return min(left, deadline - time.time()) if deadline is not None else left

    def elapsed(self):
        return time.time() - self.start

    def say(self, fmt, *args, force=False):
        """say() at most every `every` seconds, unless forced."""
        if self.enabled and (force or time.time() - self.last_line >= self.every):
            say(fmt, *args)
            self.last_line = time.time()


class MetricsLog:
    """workdir/metrics.jsonl (one JSON object per line) + TensorBoard events in workdir/tb."""

    def __init__(self, workdir, resume_step):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = is_chief()
        self.tb = None
        if not self.enabled:
            return
        # Lines past the checkpoint we resume from describe steps that will be re-run: drop them.
        if os.path.exists(self.path):
            kept = [line for line in read_metrics(self.path) if line.get("step", 0) <= resume_step]
            with atomic_path(self.path) as tmp, open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, record):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, record["step"])
        self.tb.flush()

    def last(self, key):
        """The last record holding `key` (e.g. after a resume), or None."""
        if not self.enabled or not os.path.exists(self.path):
            return None
        found = [r for r in read_metrics(self.path) if key in r]
        return found[-1] if found else None

    def close(self):
        if self.tb is not None:
            self.tb.close()


class Status:
    """workdir/status.json, for people and the sweep runner: why the run stopped.

    {status, step, num_steps, pid, host, error, kind, result, updated}. running: written on entry and at each
    checkpoint (a killed process leaves it with a dead pid); finished: result holds the final test metric;
    interrupted: SIGTERM, a checkpoint was saved; failed: error is the message, kind the DiffvarError's kind
    ("non_finite", "data", ...) or "crash". As a context manager it records any exception leaving the block
    as failed, then lets it propagate. Only process 0 writes.
    """

    def __init__(self, workdir, num_steps, step=0):
        self.path, self.num_steps, self.step = os.path.join(workdir, "status.json"), num_steps, step

    def write(self, status, error=None, kind=None, result=None):
        if not is_chief():
            return
        with contextlib.suppress(OSError):  # advisory: a full disk must not hide the error being recorded
            write_json_atomic(
                self.path,
                {
                    "status": status,
                    "step": int(self.step),
                    "num_steps": int(self.num_steps),
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "error": error,
                    "kind": kind,
                    "result": result,
                    "updated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                },
            )

    def __enter__(self):
        self.write("running")
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, DiffvarError):
            self.write("failed", error=str(error), kind=error.kind)
        elif isinstance(error, Exception):
            self.write("failed", error=f"{type(error).__name__}: {error}", kind="crash")
        return False
