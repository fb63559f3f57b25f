"""A sweep's results, rebuilt from its trials' state (store.collect) at any time: results.csv, results.md, and
results.png (figure() draws it); results_seeds.csv when seeds are swept.
"""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from diffvar import logs
from diffvar.files import atomic_path
from diffvar.plots import save_figure
from diffvar.sweep import store


def _sort_key(row):
    return (
        row["metric"] is None,
        row["metric"] if row["metric"] is not None else 0.0,
        store.STATUSES.index(row["status"]) if row["status"] in store.STATUSES else 9,
        row["name"],
    )


def seed_table(rows: list[dict], keys: list[str]) -> list[dict]:
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
        table.append(
            {
                "setting": dict(zip(others, setting)),
                "n": len(values),
                "total": len(members),
                "mean": float(values.mean()) if len(values) else None,
                "std": float(values.std(ddof=1)) if len(values) > 1 else None,
            }
        )
    table.sort(key=lambda t: (t["mean"] is None, t["mean"] or 0.0))
    return table


def _fmt(x, digits=4):
    return "" if x is None else f"{x:.{digits}f}"


def _cell(text, width=120):
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 3] + "..."


def _write_text(path, text):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def _csv(header, rows):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def trials_csv(rows: list[dict], keys: list[str], metric: str) -> str:
    """results.csv: one line per trial."""
    header = [
        "trial",
        *keys,
        "status",
        metric,
        f"{metric}_stderr",
        "step",
        "num_steps",
        "wall_s",
        "attempts",
        "kind",
        "error",
    ]
    return _csv(
        header,
        [
            [
                r["name"],
                *(r["overrides"].get(k, "") for k in keys),
                r["status"],
                _fmt(r["metric"], 6),
                _fmt(r["stderr"], 6),
                r["step"] if r["step"] is not None else "",
                r["num_steps"] or "",
                _fmt(r["wall_s"], 1),
                r["attempts"],
                r["kind"] or "",
                r["error"] or "",
            ]
            for r in rows
        ],
    )


def seeds_csv(seeds: list[dict], others: list[str], metric: str) -> str:
    """results_seeds.csv: one line per setting of the keys other than seed."""
    header = [*others, f"{metric}_mean", f"{metric}_std", "seeds_finished", "seeds_total"]
    return _csv(
        header,
        [
            [*(t["setting"][k] for k in others), _fmt(t["mean"], 6), _fmt(t["std"], 6), t["n"], t["total"]]
            for t in seeds
        ],
    )


def _markdown_row(cells):
    return "| " + " | ".join(cells) + " |"


def trials_markdown(rows: list[dict], keys: list[str], metric: str) -> list[str]:
    """The lines of results.md's trial table, with a title counting the trials by status."""
    c = store.counts(rows)
    lines = [
        f"# Sweep results ({len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in c.items() if n) + ")",
        "",
        f"Sorted by {metric} (lower is better; ± one standard error).",
        "",
        _markdown_row([*keys, "status", f"{metric} ± s.e.", "steps", "wall", "error"]),
        "|" + "---|" * (len(keys) + 5),
    ]
    for r in rows:
        value = f"{r['metric']:.4f} ± {_fmt(r['stderr'])}" if r["metric"] is not None else ""
        steps = f"{r['step'] or 0}/{r['num_steps']}" if r["num_steps"] else str(r["step"] or "")
        wall = f"{r['wall_s'] / 60:.1f} min" if r["wall_s"] else ""
        error = f"{r['kind']}: {_cell(r['error'])}" if r["status"] == "failed" else ""
        lines.append(
            _markdown_row([*(_cell(r["overrides"].get(k, "")) for k in keys), r["status"], value, steps, wall, error])
        )
    return lines


def seeds_markdown(seeds: list[dict], others: list[str], metric: str) -> list[str]:
    """The lines of results.md's table of means ± std over seeds."""
    lines = [
        "",
        "## Mean ± std over seeds",
        "",
        _markdown_row([*others, f"{metric} mean ± std", "seeds finished"]),
        "|" + "---|" * (len(others) + 2),
    ]
    for t in seeds:
        value = f"{t['mean']:.4f} ± {_fmt(t['std'])}" if t["std"] is not None else _fmt(t["mean"])
        lines.append(_markdown_row([*(t["setting"][k] for k in others), value, f"{t['n']}/{t['total']}"]))
    return lines


def write(workdir: str, rows: list[dict] | None = None, keys: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """Writes results.csv, results.md and results.png (and results_seeds.csv when seeds are swept) in
    `workdir`, atomically; returns (rows, keys)."""
    if rows is None:
        rows, keys = store.collect(workdir)
    rows = sorted(rows, key=_sort_key)
    units = sorted({r["unit"] for r in rows if r["unit"]})
    metric = logs.metric_key(units[0]) if len(units) == 1 else "metric"
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


def figure(rows: list[dict], keys: list[str], metric: str = "metric") -> Figure:
    """One panel per swept key: the metric of the finished trials against that key's values, one series per
    setting of the other keys. With several seeds, seeds are averaged (error bars ± std over seeds), else
    the error bars are ± one standard error. Numeric keys use a numeric axis (log when spanning >= 20x).
    Without finished trials, or with one setting, a single panel says so."""
    done = [r for r in rows if r["metric"] is not None]
    varying = [k for k in keys if len({r["overrides"].get(k, "") for r in rows}) > 1] or keys
    fig = Figure(figsize=(4.5 * max(1, len(varying)), 4))
    if not done or not varying:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(
            0.5,
            0.5,
            "no finished trials yet" if not done else f"one trial: {metric} {done[0]['metric']:.4f}",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return fig
    average_seeds = "seed" in varying and len({r["overrides"].get("seed") for r in done}) > 1
    for i, key in enumerate(varying):
        others = [k for k in varying if k != key and not (average_seeds and k == "seed")]
        ax = fig.add_subplot(1, len(varying), i + 1)
        panel(ax, done, key, others, metric)
        bars = "± std over seeds" if average_seeds and key != "seed" else "± 1 s.e."
        ax.set_title(f"{metric} vs {key} ({bars})", fontsize=9)
    fig.tight_layout()
    return fig


def plot(path: str, rows: list[dict], keys: list[str], metric: str = "metric") -> None:
    """figure(rows, keys, metric) written to `path` (PNG, atomically)."""
    save_figure(figure(rows, keys, metric), path)


def _point(members):
    """(mean, error bar) of the trials at one x: ± std over several, else the one trial's standard error."""
    ms = [m["metric"] for m in members]
    if len(ms) > 1:
        return float(np.mean(ms)), float(np.std(ms, ddof=1))
    return float(ms[0]), members[0]["stderr"] if members[0]["stderr"] is not None else math.nan


def panel(ax, done: list[dict], key: str, others: list[str], metric: str) -> None:
    """The metric of the finished trials `done` against `key`, one series per setting of the `others` keys."""
    series = {}
    for r in done:
        label = ", ".join(f"{k}={r['overrides'].get(k, '')}" for k in others)
        series.setdefault(label, {}).setdefault(r["overrides"].get(key, ""), []).append(r)
    xs_text = list(dict.fromkeys(r["overrides"].get(key, "") for r in done))
    numeric = all(logs.finite_number(x) is not None for x in xs_text)
    values = [logs.finite_number(x) for x in xs_text] if numeric else list(range(len(xs_text)))
    for j, (label, points) in enumerate(series.items()):
        shift = 0.0 if numeric else 0.08 * (j - (len(series) - 1) / 2)  # categories: series side by side
        xs = [values[xs_text.index(x)] + shift for x in points]
        ys, es = zip(*(_point(members) for members in points.values()))
        order = np.argsort(xs)
        ax.errorbar(
            np.array(xs)[order],
            np.array(ys)[order],
            yerr=np.array(es)[order],
            fmt="o-" if numeric else "o",
            ms=4,
            capsize=3,
            lw=1,
            label=label or None,
        )
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
