"""A sweep's tables and plot (diffvar/sweep/results.py) from trial rows as store.read_trial gives them: what the
figure shows, read back from matplotlib's objects."""

import pytest

from diffvar.sweep import results


def row(status="finished", metric=None, stderr=0.01, **overrides):
    return {
        "name": ",".join(f"{k}={v}" for k, v in overrides.items()),
        "overrides": overrides,
        "status": status,
        "unit": "nats",
        "metric": metric,
        "stderr": stderr if metric is not None else None,
        "step": 4,
        "num_steps": 4,
        "wall_s": 1.0,
        "attempts": 1,
        "kind": None,
        "error": None,
        "host": "h",
    }


def series(ax):
    """[(label, xs, ys, error bars)] of the error-bar series drawn on `ax`."""
    out = []
    for c in ax.containers:
        xs, ys = c.lines[0].get_xdata(), c.lines[0].get_ydata()
        (bars,) = c.lines[2]
        errs = [abs(seg[1, 1] - seg[0, 1]) / 2 for seg in bars.get_segments()]
        out.append((c.get_label(), list(xs), list(ys), errs))
    return out


def test_the_metric_against_each_key_with_seeds_averaged():
    rows = [row(metric=1 + lr + 0.01 * s, lr=str(lr), seed=str(s)) for lr in (0.1, 0.5) for s in (0, 1, 2)]
    rows.append(row(status="failed", lr="0.3", seed="0"))  # not drawn: no metric
    fig = results.figure(rows, ["lr", "seed"], "test_nats")
    ax_lr, ax_seed = fig.axes
    assert (ax_lr.get_xlabel(), ax_lr.get_ylabel()) == ("lr", "test_nats")
    assert ax_lr.get_title() == "test_nats vs lr (± std over seeds)"
    ((_, xs, ys, errs),) = series(ax_lr)  # one series: the seeds are averaged
    assert xs == [0.1, 0.5] and ys == pytest.approx([1.11, 1.51]) and errs == pytest.approx([0.01, 0.01])
    assert (ax_seed.get_xlabel(), ax_seed.get_title()) == ("seed", "test_nats vs seed (± 1 s.e.)")
    drawn = series(ax_seed)  # one series per lr, each trial's own standard error
    assert [label for label, *_ in drawn] == ["lr=0.1", "lr=0.5"]
    for (_, xs, ys, errs), lr in zip(drawn, (0.1, 0.5)):
        assert xs == [0, 1, 2] and ys == pytest.approx([1 + lr, 1.01 + lr, 1.02 + lr])
        assert errs == pytest.approx([0.01] * 3)
    assert [t.get_text() for t in ax_seed.get_legend().get_texts()] == ["lr=0.1", "lr=0.5"]


def test_axes_follow_the_values():
    wide = [row(metric=m, lr=lr) for lr, m in (("1e-4", 2.0), ("1e-3", 1.5), ("1e-2", 1.8))]
    (ax,) = results.figure(wide, ["lr"]).axes
    assert ax.get_xscale() == "log" and series(ax)[0][1] == [1e-4, 1e-3, 1e-2]  # spans >= 20x: log axis
    names = [row(metric=m, objective=o) for o, m in (("dsm", 1.2), ("elbo", 1.1))]
    (ax,) = results.figure(names, ["objective"]).axes
    assert ax.get_xscale() == "linear" and [t.get_text() for t in ax.get_xticklabels()] == ["dsm", "elbo"]
    assert series(ax)[0][1:3] == ([0, 1], [1.2, 1.1])  # one category each, in the order first seen


def test_a_figure_without_finished_trials_says_so():
    (ax,) = results.figure([row(status="running", lr="0.1"), row(status="pending", lr="0.2")], ["lr"]).axes
    assert [t.get_text() for t in ax.texts] == ["no finished trials yet"] and not ax.containers
    (ax,) = results.figure([row(metric=1.25)], [], "test_bpd").axes  # no key swept
    assert [t.get_text() for t in ax.texts] == ["one trial: test_bpd 1.2500"]
    (ax,) = results.figure([row(metric=1.25, lr="0.1")], ["lr"], "test_bpd").axes  # one value of one key
    assert series(ax)[0][1:3] == ([0.1], [1.25]) and ax.get_xlabel() == "lr"


def test_tables_sort_by_the_metric_and_average_seeds(tmp_path):
    rows = [row(metric=1 + lr + 0.01 * s, lr=str(lr), seed=str(s)) for lr in (0.5, 0.1) for s in (0, 1)]
    rows.append(row(status="failed", lr="0.3", seed="0"))
    rows[-1].update(kind="crash", error="exit status 1: boom")
    sorted_rows, _ = results.write(str(tmp_path), rows, ["lr", "seed"])
    assert [r["name"] for r in sorted_rows] == [
        "lr=0.1,seed=0",
        "lr=0.1,seed=1",
        "lr=0.5,seed=0",
        "lr=0.5,seed=1",
        "lr=0.3,seed=0",
    ]
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("trial,lr,seed,status,test_nats,test_nats_stderr")
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# Sweep results (5 trials: 4 finished, 1 failed)")
    assert "| 0.1 | 1.1050 ± 0.0071 | 2/2 |" in md and "crash: exit status 1: boom" in md
    seeds = [line.split(",")[:3] for line in (tmp_path / "results_seeds.csv").read_text().splitlines()]
    assert seeds == [
        ["lr", "test_nats_mean", "test_nats_std"],
        ["0.1", "1.105000", "0.007071"],
        ["0.5", "1.505000", "0.007071"],
        ["0.3", "", ""],
    ]
