"""A sweep's state, in files: the runner's records and what it reads of the trainers' (results.py makes the
tables and the plot from it).

A sweep directory holds sweep.json (the runner's manifest: every trial's name and overrides) and one workdir
per trial with the runner's trial.json (status, attempts, wall time, error, kind) and the trainer's
status.json and metrics.jsonl. read_trial() merges them, at any time, also while the sweep runs; record(),
begin() and end() update trial.json; outcome() says how an attempt ended.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

from diffvar import logs
from diffvar.files import write_json_atomic

MANIFEST = "sweep.json"
TRIAL_FILE = "trial.json"
STATUS_FILE = "status.json"
STATUSES = ("finished", "running", "interrupted", "failed", "pending")  # a trial's, best first


def read_json(path: str | os.PathLike) -> dict | None:
    """The JSON object in `path`, or None if it is missing, partial or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def pid_alive(pid) -> bool:
    """Whether a process with this id exists on this machine."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _metric(status, trial_dir):
    """(unit, value, stderr) of the final test metric: status.json's result, else the last metrics.jsonl
    record carrying one (logs.metric_of); (None, None, None) when there is none."""
    sources = [status.get("result")] if status and isinstance(status.get("result"), dict) else []
    path = os.path.join(trial_dir, "metrics.jsonl")
    if os.path.exists(path):
        sources += reversed(logs.read_metrics(path))
    return next(filter(None, map(logs.metric_of, sources)), (None, None, None))


def read_trial(trial_dir: str, name: str | None = None, overrides: dict | None = None) -> dict:
    """One trial's state: a dict with name, overrides ({key: text}), status (pending | running | finished |
    interrupted | failed), unit, metric, stderr, step, num_steps, wall_s, attempts, kind, error, host.

    A trial recorded running whose runner and trainer processes are gone (on this host) is interrupted."""
    tj = read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
    st = read_json(os.path.join(trial_dir, STATUS_FILE))
    status = tj.get("status", "pending")
    if st and st.get("status") == "finished":
        status = "finished"
    elif status == "running" and tj.get("host") == socket.gethostname():
        alive = pid_alive(tj.get("runner_pid")) or (st and st.get("status") == "running" and pid_alive(st.get("pid")))
        status = "running" if alive else "interrupted"
    unit, metric, stderr = _metric(st, trial_dir)
    step = (st or {}).get("step")
    metrics = os.path.join(trial_dir, "metrics.jsonl")
    if step is None and os.path.exists(metrics):
        steps = [logs.finite_number(r.get("step")) for r in logs.read_metrics(metrics)]
        step = int(max([s for s in steps if s is not None], default=0)) or None
    return {
        "name": name or tj.get("name") or os.path.basename(trial_dir),
        "overrides": overrides if overrides is not None else tj.get("overrides_text", {}),
        "status": status,
        "unit": unit,
        "metric": metric if status == "finished" else None,
        "stderr": stderr if status == "finished" else None,
        "step": step,
        "num_steps": (st or {}).get("num_steps"),
        "wall_s": tj.get("wall_s"),
        "attempts": tj.get("attempts", 0),
        "kind": tj.get("kind") if status == "failed" else None,
        "error": tj.get("error") if status == "failed" else None,
        "host": tj.get("host"),
    }


def _error_line(log_path, offset):
    """(last `error: ...` line, last non-empty line) of the log written since `offset`."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            lines = [row.strip() for row in f.read().decode("utf-8", "replace").splitlines() if row.strip()]
    except OSError:
        return None, None
    errors = [row[len("error:") :].strip() for row in lines if row.startswith("error:")]
    return (errors[-1] if errors else None), (lines[-1] if lines else None)


def outcome(
    trial_dir: str, returncode: int | None, log_offset: int, signalled: bool = False
) -> tuple[str, str | None, str | None]:
    """(status, error, kind) of one finished attempt, from the exit status, status.json and the log:
    finished | interrupted | failed (deterministic: kind from the trainer) | crashed (kind "crash")."""
    st = read_json(os.path.join(trial_dir, STATUS_FILE)) or {}
    error_line, last_line = _error_line(os.path.join(trial_dir, "train.log"), log_offset)
    if st.get("status") == "finished" or (returncode == 0 and not signalled and st.get("status") != "interrupted"):
        return "finished", None, None
    if st.get("status") == "failed" and st.get("kind") not in (None, "crash"):
        return "failed", st.get("error") or error_line, st["kind"]
    if returncode == 1 and error_line:
        return "failed", error_line, st.get("kind") or "error"
    if signalled or returncode == 0:
        return "interrupted", None, None
    if returncode is not None and returncode < 0:
        why = f"killed by {signal.Signals(-returncode).name}"
    else:
        why = f"exit status {returncode}"
    detail = st.get("error") or last_line
    return "crashed", f"{why}: {detail}" if detail else why, "crash"


def record(trial_dir: str, **fields) -> dict:
    """Updates the runner's trial.json with `fields`."""
    path = os.path.join(trial_dir, TRIAL_FILE)
    data = read_json(path) or {}
    data.update(fields)
    write_json_atomic(path, data)
    return data


def begin(trial_dir: str, **fields) -> dict:
    """Records the start of an attempt: running, attempts + 1, this host and runner process."""
    prior = read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
    return record(
        trial_dir,
        status="running",
        attempts=prior.get("attempts", 0) + 1,
        host=socket.gethostname(),
        runner_pid=os.getpid(),
        started=time.time(),
        **fields,
    )


def end(trial_dir: str, t0: float, **fields) -> dict:
    """Records the end of an attempt started at time t0 (its wall time is added to the trial's)."""
    prior = read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
    return record(trial_dir, ended=time.time(), wall_s=(prior.get("wall_s") or 0.0) + time.time() - t0, **fields)


def collect(workdir: str) -> tuple[list[dict], list[str]]:
    """Every trial of the sweep in `workdir`: the manifest's trials (pending when not started) and any other
    trial workdir holding a trial.json. Returns (rows, keys): rows as read_trial(), keys the swept keys."""
    manifest = read_json(os.path.join(workdir, MANIFEST)) or {}
    rows, names = [], set()
    for t in manifest.get("trials", []):
        rows.append(read_trial(os.path.join(workdir, t["name"]), t["name"], t["overrides_text"]))
        names.add(t["name"])
    if os.path.isdir(workdir):
        for name in sorted(os.listdir(workdir)):
            if name not in names and os.path.exists(os.path.join(workdir, name, TRIAL_FILE)):
                rows.append(read_trial(os.path.join(workdir, name)))
    keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))
    return rows, keys


def counts(rows: list[dict]) -> dict[str, int]:
    """{status: number of trials} for every status."""
    return {s: sum(r["status"] == s for r in rows) for s in STATUSES}


def progress_line(rows: list[dict], t_start: float, parallel: int, durations: list[float]) -> str:
    """ "sweep: 3/8 finished, 2 running, 1 failed, 2 left | elapsed 0:01:10 | eta 0:02:05"."""
    c = counts(rows)
    left = c["pending"] + c["interrupted"]
    line = (
        f"sweep: {c['finished']}/{len(rows)} finished, {c['running']} running, {c['failed']} failed, "
        f"{left} left | elapsed {logs.fmt_time(time.time() - t_start)}"
    )
    if durations and (left or c["running"]):
        frac = [
            min(1.0, (r["step"] or 0) / r["num_steps"]) if r["num_steps"] else 0.5
            for r in rows
            if r["status"] == "running"
        ]
        eta = sum(durations) / len(durations) * (left + sum(1 - f for f in frac)) / max(1, parallel)
        line += f" | eta {logs.fmt_time(eta)}"
    return line


def write_manifest(workdir: str, manifest: dict) -> None:
    """Writes sweep.json (atomically)."""
    write_json_atomic(os.path.join(workdir, MANIFEST), manifest)
