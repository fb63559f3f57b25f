"""A sweep's state and results, read from its trial workdirs: results.csv, results.md, results.png.

A sweep directory holds sweep.json (the runner's manifest: every trial's name and overrides) and one workdir
per trial with the runner's trial.json (status, attempts, wall time, error, kind) and the trainer's
status.json and metrics.jsonl. read_trial() merges them; write() rebuilds the tables and the plot at any time,
also while the sweep runs.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import socket
import time

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from diffvar.files import atomic_path, write_json_atomic
from diffvar.plots import finite_number, read_metrics, save_figure

MANIFEST = "sweep.json"
TRIAL_FILE = "trial.json"
STATUS_FILE = "status.json"
UNITS = ("bpd", "nats")
_ORDER = {"finished": 0, "running": 1, "interrupted": 2, "failed": 3, "pending": 4}


def read_json(path):
    """The JSON object in `path`, or None if it is missing, partial or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def pid_alive(pid):
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
    record carrying test_bpd / test_nats; (None, None, None) when there is none."""
    sources = [status.get("result")] if status and isinstance(status.get("result"), dict) else []
    path = os.path.join(trial_dir, "metrics.jsonl")
    if os.path.exists(path):
        sources += reversed(read_metrics(path))
    for rec in sources:
        for unit in UNITS:
            value = finite_number(rec.get(f"test_{unit}"))
            if value is not None:
                return unit, value, finite_number(rec.get(f"test_{unit}_stderr"))
    return None, None, None


def read_trial(trial_dir, name=None, overrides=None):
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
    if step is None and os.path.exists(os.path.join(trial_dir, "metrics.jsonl")):
        steps = [finite_number(r.get("step")) for r in read_metrics(os.path.join(trial_dir, "metrics.jsonl"))]
        step = int(max([s for s in steps if s is not None], default=0)) or None
    return {"name": name or tj.get("name") or os.path.basename(trial_dir),
            "overrides": overrides if overrides is not None else tj.get("overrides_text", {}),
            "status": status, "unit": unit, "metric": metric if status == "finished" else None,
            "stderr": stderr if status == "finished" else None, "step": step,
            "num_steps": (st or {}).get("num_steps"), "wall_s": tj.get("wall_s"), "attempts": tj.get("attempts", 0),
            "kind": tj.get("kind") if status == "failed" else None,
            "error": tj.get("error") if status == "failed" else None, "host": tj.get("host")}


def _error_line(log_path, offset):
    """(last `error: ...` line, last non-empty line) of the log written since `offset`."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            lines = [l.strip() for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
    except OSError:
        return None, None
    errors = [l[len("error:"):].strip() for l in lines if l.startswith("error:")]
    return (errors[-1] if errors else None), (lines[-1] if lines else None)


def outcome(trial_dir, returncode, log_offset, signalled=False):
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


def record(trial_dir, **fields):
    """Updates the runner's trial.json with `fields`."""
    path = os.path.join(trial_dir, TRIAL_FILE)
    data = read_json(path) or {}
    data.update(fields)
    write_json_atomic(path, data)
    return data


def begin(trial_dir, **fields):
    """Records the start of an attempt: running, attempts + 1, this host and runner process."""
    prior = read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
    return record(trial_dir, status="running", attempts=prior.get("attempts", 0) + 1, host=socket.gethostname(),
                  runner_pid=os.getpid(), started=time.time(), **fields)


def end(trial_dir, t0, **fields):
    """Records the end of an attempt started at time t0 (its wall time is added to the trial's)."""
    prior = read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
    return record(trial_dir, ended=time.time(), wall_s=(prior.get("wall_s") or 0.0) + time.time() - t0, **fields)


def collect(workdir):
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


def counts(rows):
    """{status: number of trials} for every status."""
    return {s: sum(r["status"] == s for r in rows) for s in _ORDER}


def progress_line(rows, t_start, parallel, durations):
    """"sweep: 3/8 finished, 2 running, 1 failed, 2 left | elapsed 0:01:10 | eta 0:02:05"."""
    from diffvar.logs import fmt_time  # not at the top: logs imports jax, and each Slurm job unpickles this module
    c = counts(rows)
    left = c["pending"] + c["interrupted"]
    line = (f"sweep: {c['finished']}/{len(rows)} finished, {c['running']} running, {c['failed']} failed, "
            f"{left} left | elapsed {fmt_time(time.time() - t_start)}")
    if durations and (left or c["running"]):
        frac = [min(1.0, (r["step"] or 0) / r["num_steps"]) if r["num_steps"] else 0.5
                for r in rows if r["status"] == "running"]
        eta = sum(durations) / len(durations) * (left + sum(1 - f for f in frac)) / max(1, parallel)
        line += f" | eta {fmt_time(eta)}"
    return line


# ----------------------------------------------------------------------------------------------
# The tables: results.csv, results.md and, when seeds are swept, results_seeds.csv.


def _sort_key(row):
    return (row["metric"] is None, row["metric"] if row["metric"] is not None else 0.0,
            _ORDER.get(row["status"], 9), row["name"])


def seed_table(rows, keys):
    """Mean and std over seeds of the finished trials per setting of the other keys (only when `seed` takes
    several values): a list of dicts {setting: {key: text}, n, total, mean, std}, sorted by mean."""
    if "seed" not in keys or len({r["overrides"].get("seed") for r in rows}) < 2:
        return []
    others = [k for k in keys if k != "seed"]
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r["overrides"].get(k, "") for k in others), []).append(r)
    table = []
    for setting, members in groups.items():
        values = np.array([r["metric"] for r in members if r["metric"] is not None])
        table.append({"setting": dict(zip(others, setting)), "n": len(values), "total": len(members),
                      "mean": float(values.mean()) if len(values) else None,
                      "std": float(values.std(ddof=1)) if len(values) > 1 else None})
    table.sort(key=lambda t: (t["mean"] is None, t["mean"] or 0.0))
    return table


def _fmt(x, digits=4):
    return "" if x is None else f"{x:.{digits}f}"


def _cell(text, width=120):
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 3] + "..."


def _write_text(path, text):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def _csv(header, rows):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def trials_csv(rows, keys, metric):
    """results.csv: one line per trial."""
    header = ["trial", *keys, "status", metric, f"{metric}_stderr", "step", "num_steps", "wall_s", "attempts",
              "kind", "error"]
    return _csv(header, [[r["name"], *(r["overrides"].get(k, "") for k in keys), r["status"], _fmt(r["metric"], 6),
                          _fmt(r["stderr"], 6), r["step"] if r["step"] is not None else "", r["num_steps"] or "",
                          _fmt(r["wall_s"], 1), r["attempts"], r["kind"] or "", r["error"] or ""] for r in rows])


def seeds_csv(seeds, others, metric):
    """results_seeds.csv: one line per setting of the keys other than seed."""
    header = [*others, f"{metric}_mean", f"{metric}_std", "seeds_finished", "seeds_total"]
    return _csv(header, [[*(t["setting"][k] for k in others), _fmt(t["mean"], 6), _fmt(t["std"], 6), t["n"],
                          t["total"]] for t in seeds])


def _markdown_row(cells):
    return "| " + " | ".join(cells) + " |"


def trials_markdown(rows, keys, metric):
    """The lines of results.md's trial table, with a title counting the trials by status."""
    c = counts(rows)
    lines = [f"# Sweep results ({len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in c.items() if n) + ")",
             "", f"Sorted by {metric} (lower is better; ± one standard error).", "",
             _markdown_row([*keys, "status", f"{metric} ± s.e.", "steps", "wall", "error"]),
             "|" + "---|" * (len(keys) + 5)]
    for r in rows:
        value = f"{r['metric']:.4f} ± {_fmt(r['stderr'])}" if r["metric"] is not None else ""
        steps = f"{r['step'] or 0}/{r['num_steps']}" if r["num_steps"] else str(r["step"] or "")
        wall = f"{r['wall_s'] / 60:.1f} min" if r["wall_s"] else ""
        error = f"{r['kind']}: {_cell(r['error'])}" if r["status"] == "failed" else ""
        lines.append(_markdown_row([*(_cell(r["overrides"].get(k, "")) for k in keys), r["status"], value, steps,
                                    wall, error]))
    return lines


def seeds_markdown(seeds, others, metric):
    """The lines of results.md's table of means ± std over seeds."""
    lines = ["", "## Mean ± std over seeds", "", _markdown_row([*others, f"{metric} mean ± std", "seeds finished"]),
             "|" + "---|" * (len(others) + 2)]
    for t in seeds:
        value = f"{t['mean']:.4f} ± {_fmt(t['std'])}" if t["std"] is not None else _fmt(t["mean"])
        lines.append(_markdown_row([*(t["setting"][k] for k in others), value, f"{t['n']}/{t['total']}"]))
    return lines


def write(workdir, rows=None, keys=None):
    """Writes results.csv, results.md and results.png (and results_seeds.csv when seeds are swept) in
    `workdir`, atomically; returns (rows, keys)."""
    if rows is None:
        rows, keys = collect(workdir)
    rows = sorted(rows, key=_sort_key)
    units = sorted({r["unit"] for r in rows if r["unit"]})
    metric = f"test_{units[0]}" if len(units) == 1 else "metric"
    _write_text(os.path.join(workdir, "results.csv"), trials_csv(rows, keys, metric))
    lines = trials_markdown(rows, keys, metric)
    seeds, others = seed_table(rows, keys), [k for k in keys if k != "seed"]
    if seeds:
        lines += seeds_markdown(seeds, others, metric)
        _write_text(os.path.join(workdir, "results_seeds.csv"), seeds_csv(seeds, others, metric))
    _write_text(os.path.join(workdir, "results.md"), "\n".join(lines) + "\n")
    plot(os.path.join(workdir, "results.png"), rows, keys, metric)
    return rows, keys


# ----------------------------------------------------------------------------------------------
# The plot: the metric against each swept key.


def plot(path, rows, keys, metric="metric"):
    """One panel per swept key: the metric of the finished trials against that key's values, one series per
    setting of the other keys. With several seeds, seeds are averaged (error bars ± std over seeds), else
    the error bars are ± one standard error. Numeric keys use a numeric axis (log when spanning >= 20x)."""
    done = [r for r in rows if r["metric"] is not None]
    varying = [k for k in keys if len({r["overrides"].get(k, "") for r in rows}) > 1] or keys
    fig = Figure(figsize=(4.5 * max(1, len(varying)), 4))
    if not done or not varying:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no finished trials yet" if not done else f"one trial: {metric} {done[0]['metric']:.4f}",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        save_figure(fig, path)
        return
    average_seeds = "seed" in varying and len({r["overrides"].get("seed") for r in done}) > 1
    for i, key in enumerate(varying):
        others = [k for k in varying if k != key and not (average_seeds and k == "seed")]
        ax = fig.add_subplot(1, len(varying), i + 1)
        panel(ax, done, key, others, metric)
        bars = "± std over seeds" if average_seeds and key != "seed" else "± 1 s.e."
        ax.set_title(f"{metric} vs {key} ({bars})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _point(members):
    """(mean, error bar) of the trials at one x: ± std over several, else the one trial's standard error."""
    ms = [m["metric"] for m in members]
    if len(ms) > 1:
        return float(np.mean(ms)), float(np.std(ms, ddof=1))
    return float(ms[0]), members[0]["stderr"] if members[0]["stderr"] is not None else math.nan


def panel(ax, done, key, others, metric):
    """The metric of the finished trials `done` against `key`, one series per setting of the `others` keys."""
    series = {}
    for r in done:
        label = ", ".join(f"{k}={r['overrides'].get(k, '')}" for k in others)
        series.setdefault(label, {}).setdefault(r["overrides"].get(key, ""), []).append(r)
    xs_text = list(dict.fromkeys(r["overrides"].get(key, "") for r in done))
    numeric = all(finite_number(x) is not None for x in xs_text)
    values = [finite_number(x) for x in xs_text] if numeric else list(range(len(xs_text)))
    for j, (label, points) in enumerate(series.items()):
        shift = 0.0 if numeric else 0.08 * (j - (len(series) - 1) / 2)  # categories: series side by side
        xs = [values[xs_text.index(x)] + shift for x in points]
        ys, es = zip(*(_point(members) for members in points.values()))
        order = np.argsort(xs)
        ax.errorbar(np.array(xs)[order], np.array(ys)[order], yerr=np.array(es)[order],
                    fmt="o-" if numeric else "o", ms=4, capsize=3, lw=1, label=label or None)
    _axis(ax, xs_text, values, numeric)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if 1 < len(series) <= 8:
        ax.legend(fontsize=7)


def _axis(ax, xs_text, values, numeric):
    """A numeric x axis (log when the values span >= 20x), or one tick per category."""
    if numeric and min(values) > 0 and max(values) / min(values) >= 20:
        ax.set_xscale("log")
    if numeric and all(float(v).is_integer() for v in values):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not numeric:
        ax.set_xlim(-0.5, len(values) - 0.5)
        ax.set_xticks(values)
        ax.set_xticklabels(xs_text, rotation=20 if max(len(x) for x in xs_text) > 6 else 0, fontsize=8)


def write_manifest(workdir, manifest):
    """Writes sweep.json (atomically)."""
    write_json_atomic(os.path.join(workdir, MANIFEST), manifest)
