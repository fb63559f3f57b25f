"""Checkpoint evaluation: the ELBO in both forms, the exact probability-flow ODE likelihood, one JSON and a table.

    res = run_eval(workdir, step="best", forms=("ism", "dsm"), ode=True)    # -> dict; writes eval/<step>.json
    print(format_table(res))

- ELBO (lambda = 0 plug-in reverse SDE), ISM form and DSM form: unbiased estimates of the same number for any
  score; each example's value is averaged over `repeats` independent draws (evaluator.Evaluator, the object
  the trainer logs its test metric with: with the run's options and seed the two give the same number).
- ODE: log p of the probability-flow ODE (lambda = 1) with the same score, by an adaptive solver (Tsit5),
  exact trace for small d and Hutchinson otherwise. It is the exact likelihood of a *different* model than the
  ELBO bounds; with the exact score the two agree. The ODE solves each batch as one system (diffrax's error
  norm is over the whole batch), so per-example values are accurate to about the tolerance on average.
- For gmm2d, the data's exact -log p(x); and the paired differences of all of these on the same examples.

Values are bits/dim for images and nats per example for the 2-D toys. `score` (params -> score_fn) replaces
the network, so a known score (a Gaussian mixture's) is evaluated through exactly the same code.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import jax

from diffvar import checkpoints, config as config_lib, distributed, logs, options
from diffvar.data import SPLITS
from diffvar.elbo import FORMS
from diffvar.errors import OptionError, check_choice, check_number
from diffvar.evaluator import EvalSpec, Evaluator
from diffvar.files import write_json_atomic
from diffvar.passes import paired_difference

LOOP_FLAGS = dict(
    split=None, repeats=None, target_stderr=0.0, max_repeats=1000, max_examples=0, batch_size=None, seed=None
)  # the loop's flags and their defaults (None: the run's config)


def estimator_flags():
    """{flag name: (type, help)} of every estimator option (config.ESTIMATORS: the options dataclasses), the
    flags scripts/evaluate.py defines with default None, "the run's eval.<name>". --form is not among them: it
    selects the forms evaluated (both included)."""
    out = {}
    for cls, prefix, _ in config_lib.ESTIMATORS:
        for f in dataclasses.fields(cls):
            if prefix + f.name != "form":
                default = f"the run's eval.{prefix}{f.name}" + (
                    " for ISM, importance for DSM" if f.name == "time_sampling" else ""
                )
                out[prefix + f.name] = (type(f.default).__name__, f"{f.metadata['help']} (default: {default})")
    return out


def check_options(
    *,
    forms=("ism", "dsm"),
    num_devices=1,
    split=None,
    repeats=None,
    target_stderr=0.0,
    max_repeats=1000,
    max_examples=0,
    batch_size=None,
    seed=None,
    **estimator_options,
):
    """Raises OptionError naming the flag and what it allows; None means "the run's config" and is not checked
    (config.validate checked those when the run started). estimator_options: by flag name (estimator_flags)."""

    def number(flag, value, minimum, integer=False):
        if value is not None:
            check_number(f"--{flag}", value, minimum, integer=integer, error=OptionError)

    if split is not None:
        check_choice("--split", split, SPLITS, error=OptionError)
    if not forms:
        raise OptionError("--form selects no ELBO form; choose one of ism, dsm, both")
    for f in forms:
        check_choice("--form", f, FORMS + ("both",), error=OptionError)
    unknown = sorted(set(estimator_options) - set(estimator_flags()))
    if unknown:
        raise OptionError(f"--{unknown[0]} is not an evaluation option; choose from {', '.join(estimator_flags())}")
    for cls, prefix, _ in config_lib.ESTIMATORS:
        values = {f.name: estimator_options.get(prefix + f.name) for f in dataclasses.fields(cls)}
        options.check(cls, values, "--" + prefix, OptionError)
    number("repeats", repeats, 1, integer=True)
    number("max_repeats", max_repeats, 1, integer=True)
    number("target_stderr", target_stderr, 0)
    number("max_examples", max_examples, 0, integer=True)
    number("batch_size", batch_size, 1, integer=True)
    number("seed", seed, 0, integer=True)
    if batch_size is not None and batch_size % num_devices:
        raise OptionError(f"--batch_size={batch_size} must be divisible by the number of devices ({num_devices})")


def run_eval(
    workdir, step="latest", *, forms=("ism", "dsm"), ode=True, progress=True, write=True, score=None, **options
):
    """Evaluates a checkpoint of `workdir`; returns the result dict and (process 0, write=True) writes it to
    workdir/eval/<step>.json atomically. Writes nothing else; the checkpoints are opened read-only.

    options: the loop's (LOOP_FLAGS) and the estimators' (estimator_flags: ElboOptions' fields, ode_ + OdeOptions',
    DequantizationOptions'), by flag name; None or absent takes the run's eval config (EvalSpec.from_config):
    with them the ISM ELBO is the test metric the trainer logged at that step.
    """
    forms = tuple(dict.fromkeys(FORMS if "both" in forms else forms)) if forms else ()
    check_options(forms=forms, num_devices=len(jax.devices()), **options)  # before anything is read
    mesh = distributed.make_mesh()
    exp, params, step, filled = checkpoints.restore_params(workdir, step, mesh)
    spec = EvalSpec.from_config(exp.config, forms=forms, ode=ode, **options)
    evaluator = Evaluator(exp, mesh, spec, score)
    if evaluator.num_examples < 2:
        raise OptionError(f"--max_examples={spec.max_examples}: at least 2 examples are needed for a standard error")
    logs.say(
        "evaluating %s step %d on %s/%s: %d examples, batch %d, %d device(s); unit: %s",
        workdir,
        step,
        exp.info.name,
        spec.split,
        evaluator.num_examples,
        evaluator.batch_size,
        len(jax.devices()),
        "bits/dim" if exp.unit == "bpd" else "nats per example",
    )
    estimates = evaluator.run(params, step, progress=logs.Progress(0, every=2.0, enabled=progress))
    for name, est in estimates.items():
        if name != "exact":
            label = "ODE" if name == "ode" else f"{name.upper()}-form ELBO"
            logs.say(
                "%s: %.5f +- %.5f %s (%.1f s + %.1f s compile)",
                label,
                est["mean"],
                est["stderr"],
                exp.unit,
                est["seconds"],
                est["compile_seconds"],
            )
    res = _result(exp, workdir, step, spec, evaluator, estimates, filled)
    if write and distributed.is_chief():
        res["path"] = os.path.join(workdir, "eval", f"{step}.json")
        write_json_atomic(res["path"], {k: v for k, v in res.items() if k != "path"})
    return res


def _result(exp, workdir, step, spec, evaluator, estimates, filled):
    """The eval/<step>.json record: the run, the split, each estimate (without per-example values) and the
    paired differences of the estimators on the same examples. The value keys are named by their unit:
    bpd_elbo, bpd_ode, ... for images, nats_elbo, nats_ode, ... (-log p(x) per example) for the 2-D toys."""
    unit = exp.unit
    res = {
        "workdir": os.path.abspath(workdir),
        "step": step,
        "dataset": evaluator.dataset,
        "split": spec.split,
        "unit": unit if unit == "bpd" else "nats per example",
        "num_examples": evaluator.num_examples,
        "batch_size": evaluator.batch_size,
        "num_devices": len(jax.devices()),
        "seed": spec.seed,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax_version": jax.__version__,
        "device_kind": jax.devices()[0].device_kind,
        "config_keys_filled_with_defaults": filled,
    }
    for form in spec.forms:
        est = estimates[form]
        res.update(
            {
                f"{unit}_elbo_{form}": est["mean"],
                f"{unit}_elbo_{form}_stderr": est["stderr"],
                f"elbo_{form}": est,
                f"seconds_elbo_{form}": est["seconds"],
            }
        )
    if spec.forms:
        first = f"{unit}_elbo_{spec.forms[0]}"
        res.update(
            {f"{unit}_elbo": res[first], f"{unit}_elbo_stderr": res[f"{first}_stderr"], "elbo_form": spec.forms[0]}
        )
    if "ode" in estimates:
        est = estimates["ode"]
        res.update(
            {
                f"{unit}_ode": est["mean"],
                f"{unit}_ode_stderr": est["stderr"],
                "nfe": est["nfe"],
                "ode": est,
                "seconds_ode": est["seconds"],
            }
        )
    if "exact" in estimates:
        res.update(exact_nll_nats=estimates["exact"]["mean"], exact_nll_nats_stderr=estimates["exact"]["stderr"])
    names = [n for n in ("ism", "dsm", "ode") if n in estimates]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    pairs += [(n, "exact") for n in names if "exact" in estimates]
    res["differences"] = {}
    for a, b in pairs:
        d, se = paired_difference(estimates[a]["values"], estimates[b]["values"])
        res["differences"][f"{a}-{b}"] = {"mean": d, "stderr": se}
    for est in estimates.values():
        est.pop("values")
    return res


def describe(label):
    """An estimate's label (evaluator.estimate_label) in words, one line."""
    if label["estimator"].startswith("ELBO"):
        draws = label["draws"]
        strat = " stratified" if label.get("stratified") and draws > 1 else ""
        probes = label.get("probes", 1)
        how = (
            f"ELBO {label['form'].upper()} form from t={label['t_min']:g}, {label['time_sampling']} time, "
            f"{label['divergence']} divergence ({probes} {label['probe']} probe{'s' * (probes > 1)}), "
            f"mean of {draws}{strat} draw(s) per unit, one unit per example and pass"
        )
    else:
        steps = "one step size per example" if label.get("step_size") == "per_example" else "one per batch"
        how = (
            f"ODE {label['solver']} ({steps}), rtol {label['rtol']:g} atol {label['atol']:g}, from "
            f"t={label['t_min']:g}, {label['divergence']} trace"
        )
    if label["levels"] is None:
        deq = "continuous data, no dequantization"
    else:
        k = label["importance_samples"]
        deq = (
            f"{label['dequantization']} dequantization, "
            + ("plain bound (K=1)" if k == 1 else f"importance-weighted over K={k}")
            + f", {label['levels']} levels, {label['transform']} transform"
        )
    sde = f"{label['sde']} SDE"
    bound = ""
    if "bound" in label:
        bound = f"; {'a lower bound on' if label['bound'] else 'an estimate (NOT a bound) of'} {label['bound_of']}"
    return (
        f"{how}; {deq}; {sde}; step {label['checkpoint_step']}, {'EMA' if label['ema_params'] else 'raw'} params{bound}"
    )


def _table_rows(res):
    """(header, rows) of the result's table: estimator, value, s.e., repeats or NFE, seconds, K, bound."""
    unit = "bpd" if res["unit"] == "bpd" else "nats"
    label = lambda est, key: est.get("label", {}).get(key, "?")
    yes = lambda est: {True: "yes", False: "NO (an estimate)"}.get(label(est, "bound"), "?")

    def row(name, est, work):
        k = str(label(est, "importance_samples"))
        return (name, f"{est['mean']:.5f}", f"{est['stderr']:.5f}", work, f"{est['seconds']:.1f}", k, yes(est))

    rows = [("estimator", f"{unit} (lower is better)", "s.e.", "repeats/NFE", "seconds", "K", "bound")]
    for form in (f for f in FORMS if f"elbo_{f}" in res):
        est = res[f"elbo_{form}"]
        rows.append(row(f"ELBO, {form.upper()} form ({label(est, 'time_sampling')} t)", est, f"{est['repeats']} rep"))
    if "ode" in res:
        est = res["ode"]
        rows.append(row(f"ODE ({label(est, 'divergence')} trace)", est, f"{est['nfe']:.0f} NFE"))
    if "exact_nll_nats" in res:
        nll, se = res["exact_nll_nats"], res["exact_nll_nats_stderr"]
        rows.append(("exact -log p(x) (data)", f"{nll:.5f}", f"{se:.5f}", "", "", "", "exact"))
    return rows


def _notes(res):
    """The lines under the table: how each number was computed, and the paired differences."""
    out, names = [], (("ISM", "elbo_ism"), ("DSM", "elbo_dsm"), ("ODE", "ode"))
    labelled = [(n, res[k]["label"]) for n, k in names if k in res and "label" in res[k]]
    if labelled:
        out.append("how each number was computed:")
        out += [f"  {n}: {describe(lab)}" for n, lab in labelled]
        if labelled[0][1]["levels"] is not None:
            out.append(f"  bits/dim: {labelled[0][1]['bpd_constant']}")
    if res.get("differences"):
        exact = " (EXACT: the data's -log p(x)):" if "exact_nll_nats" in res else ":"
        out.append("differences on the same examples, with paired s.e." + exact)
        for key, v in res["differences"].items():
            a, b = key.upper().split("-")
            z = f" ({abs(v['mean']) / v['stderr']:.1f} s.e.)" if v["stderr"] > 0 else ""
            out.append(f"  {a} - {b}: {v['mean']:+.5f} +- {v['stderr']:.5f}{z}")
    return out


def format_table(res):
    """The result as a plain-text table (estimator, value +- s.e., NFE / repeats, wall time), then its notes."""
    rows = _table_rows(res)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    d = res["dataset"]
    files = "official files" if d["verified"] else "UNVERIFIED files (not the official ones)"
    head = (
        f"{d['name']} ({d['builder']} {d['version']}, {files}), {d['split']} split: {res['num_examples']} of "
        f"{d['num_examples']} examples; step {res['step']}; {res['unit']}"
    )
    table = [head, line(rows[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]
    return "\n".join(table + _notes(res))
