"""Checkpoint evaluation: the ELBO in both forms, the exact probability-flow ODE likelihood, one JSON and a table.

    res = run_eval(workdir, step="best", forms=("ism", "dsm"), ode=True)    # -> dict; writes eval/<step>.json
    print(format_table(res))

- ELBO (lambda = 0 plug-in reverse SDE), ISM form and DSM form: unbiased estimates of the same number for any
  score; each example's value is averaged over `repeats` independent draws (estimate.elbo, the same code the
  trainer logs its test metric with: with the run's options and seed the two give the same number).
- ODE: log p of the probability-flow ODE (lambda = 1) with the same score, by an adaptive solver (Tsit5),
  exact trace for small d and Hutchinson otherwise. It is the exact likelihood of a *different* model than the
  ELBO bounds; with the exact score the two agree. The ODE solves each batch as one system (diffrax's error
  norm is over the whole batch), so per-example values are accurate to about the tolerance on average.
- For gmm2d, the data's exact -log p(x); and the paired differences of all of these on the same examples.

Values are bits/dim for images and nats per example for the 2-D toys. `score` (params -> score_fn) replaces
the network, so a known score (a Gaussian mixture's) is evaluated through exactly the same code.
"""
from __future__ import annotations

import datetime
import os

import jax

from diffvar import checkpoints, distributed, estimate, experiment, likelihood, logs
from diffvar.data import SPLITS
from diffvar.errors import OptionError, check_choice, check_number
from diffvar.files import write_json_atomic
from diffvar.sde import TIME_SAMPLINGS

FORMS = likelihood.FORMS
ODE_DIVERGENCES = ("auto",) + likelihood.DIVERGENCES
EXACT_TRACE_MAX_DIM = 16  # ode_divergence="auto": the exact trace (d JVPs) up to this many dimensions


def check_options(*, split=None, forms=("ism", "dsm"), repeats=None, time_sampling=None, probe=None,
                  divergence=None, ode_rtol=1e-5, ode_atol=1e-5, ode_divergence="auto", target_stderr=0.0,
                  max_repeats=1000, max_examples=0, batch_size=None, seed=None, num_devices=1):
    """Raises OptionError naming the flag and what it allows; None means "the run's config" and is not checked."""
    def choice(flag, value, allowed):
        if value is not None:
            check_choice(f"--{flag}", value, allowed, error=OptionError)

    def number(flag, value, minimum, integer=False, strict=False):
        if value is not None:
            check_number(f"--{flag}", value, minimum, integer=integer, strict=strict, error=OptionError)

    choice("split", split, SPLITS)
    if not forms:
        raise OptionError("--form selects no ELBO form; choose one of ism, dsm, both")
    for f in forms:
        choice("form", f, FORMS + ("both",))
    number("repeats", repeats, 1, integer=True)
    number("max_repeats", max_repeats, 1, integer=True)
    choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    choice("probe", probe, likelihood.PROBES)
    choice("divergence", divergence, likelihood.DIVERGENCES)
    choice("ode_divergence", ode_divergence, ODE_DIVERGENCES)
    number("ode_rtol", ode_rtol, 0, strict=True)
    number("ode_atol", ode_atol, 0, strict=True)
    number("target_stderr", target_stderr, 0)
    number("max_examples", max_examples, 0, integer=True)
    number("batch_size", batch_size, 1, integer=True)
    number("seed", seed, 0, integer=True)
    if batch_size is not None and batch_size % num_devices:
        raise OptionError(f"--batch_size={batch_size} must be divisible by the number of devices ({num_devices})")


def run_eval(workdir, step="latest", *, split=None, forms=("ism", "dsm"), repeats=None, time_sampling=None,
             probe=None, divergence=None, ode=True, ode_rtol=1e-5, ode_atol=1e-5, ode_divergence="auto",
             target_stderr=0.0, max_repeats=1000, max_examples=0, batch_size=None, seed=None, progress=True,
             write=True, score=None):
    """Evaluates a checkpoint of `workdir`; returns the result dict and (process 0, write=True) writes it to
    workdir/eval/<step>.json atomically. Writes nothing else; the checkpoints are opened read-only.

    Defaults come from the run's config.json (eval section): split, repeats, probe, divergence, batch_size,
    time_sampling for the ISM form; the DSM form uses importance time sampling unless time_sampling is given
    (its variance with uniform time is several times larger). seed=None: the run's evaluation seed
    (config.seed + 1, what the trainer's periodic evaluation uses).
    """
    ndev = len(jax.devices())
    options = dict(time_sampling=time_sampling, ode_rtol=ode_rtol, ode_atol=ode_atol, ode_divergence=ode_divergence,
                   target_stderr=target_stderr, max_repeats=max_repeats, max_examples=max_examples, seed=seed,
                   num_devices=ndev)
    check_options(split=split, forms=forms, repeats=repeats, probe=probe, divergence=divergence,
                  batch_size=batch_size, **options)  # before anything is read
    mesh = distributed.make_mesh()
    exp, params, step, filled = checkpoints.restore_params(workdir, step, mesh)
    e = exp.config.eval
    split = split or e.split
    repeats = e.repeats if repeats is None else repeats
    probe, divergence = probe or e.probe, divergence or e.divergence
    seed = exp.config.seed + 1 if seed is None else seed
    forms = tuple(dict.fromkeys(FORMS if "both" in forms else forms))
    batch_size = batch_size or estimate.batch_size(e.batch_size, max_examples, ndev, exp.info.size(split))
    check_options(split=split, forms=forms, repeats=repeats, probe=probe, divergence=divergence,
                  batch_size=batch_size, **options)  # the values taken from the run's config
    unit = exp.unit
    batches = estimate.split_batches(exp, mesh, split, batch_size, max_examples)
    num_examples = int(sum(m.sum() for _, m in batches))
    if num_examples < 2:
        raise OptionError(f"--max_examples={max_examples}: at least 2 examples are needed for a standard error")
    logs.say("evaluating %s step %d on %s/%s: %d examples, batch %d, %d device(s); unit: %s", workdir, step,
             exp.info.name, split, num_examples, batch_size, ndev, "bits/dim" if unit == "bpd" else "nats per example")
    res = {"workdir": os.path.abspath(workdir), "step": step, "dataset": exp.info.name, "split": split,
           "unit": unit if unit == "bpd" else "nats per example (the bpd_* fields hold nats for 2-D toy data)",
           "num_examples": num_examples, "batch_size": batch_size, "num_devices": ndev, "seed": seed,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "jax_version": jax.__version__, "device_kind": jax.devices()[0].device_kind,
           "config_keys_filled_with_defaults": filled}
    show = logs.Progress(0, every=2.0, enabled=progress)
    estimates = {}
    for form in forms:
        ts = time_sampling or (e.time_sampling if form == "ism" else "importance")
        logs.say("%s-form ELBO (%s time, %s divergence), %d repeat(s)%s ...", form.upper(), ts, divergence, repeats,
                 f", until s.e. <= {target_stderr:g}" if target_stderr else "")
        key = estimate.pass_key(seed, step, form)
        fn = experiment.make_elbo_fn(exp, form, ts, probe, divergence, score)
        compiled, compile_seconds = estimate.compile(fn, params, batches[0][0], key)
        est = estimate.elbo(compiled, params, key, batches, repeats, target_stderr, max_repeats, show)
        est.update(compile_seconds=compile_seconds, form=form, time_sampling=ts, divergence=divergence, probe=probe)
        estimates[form] = est
        logs.say("%s-form ELBO: %.5f +- %.5f %s (%d repeats, %.1f s + %.1f s compile)%s", form.upper(), est["mean"],
                 est["stderr"], unit, est["repeats"], est["seconds"], compile_seconds,
                 f"; {est['stop_reason']}" if est.get("stop_reason") and not est["target_reached"] else "")
        res.update({f"bpd_elbo_{form}": est["mean"], f"bpd_elbo_{form}_stderr": est["stderr"],
                    f"elbo_{form}": est, f"seconds_elbo_{form}": est["seconds"]})
    res.update(bpd_elbo=res[f"bpd_elbo_{forms[0]}"], bpd_elbo_stderr=res[f"bpd_elbo_{forms[0]}_stderr"],
               elbo_form=forms[0])
    if ode:
        ode_div = ode_divergence if ode_divergence != "auto" else (
            "exact" if exp.dim <= EXACT_TRACE_MAX_DIM else "hutchinson")
        logs.say("probability-flow ODE (Tsit5, rtol %g, atol %g, %s trace) ...", ode_rtol, ode_atol, ode_div)
        key = estimate.pass_key(seed, step, "ode")
        fn = experiment.make_ode_fn(exp, ode_rtol, ode_atol, ode_div, probe, score=score)
        compiled, compile_seconds = estimate.compile(fn, params, batches[0][0], key)
        est = estimate.ode(compiled, params, key, batches, show)
        est.update(compile_seconds=compile_seconds, rtol=ode_rtol, atol=ode_atol, divergence=ode_div, probe=probe,
                   t_min=exp.ode_t_min)
        estimates["ode"] = est
        logs.say("ODE: %.5f +- %.5f %s, mean NFE %.0f (%.1f s + %.1f s compile)", est["mean"], est["stderr"], unit,
                 est["nfe"], est["seconds"], compile_seconds)
        res.update(bpd_ode=est["mean"], bpd_ode_stderr=est["stderr"], nfe=est["nfe"], ode=est,
                   seconds_ode=est["seconds"])
    exact = estimate.exact_nll(exp, batches)
    if exact is not None:
        estimates["exact"] = exact
        res.update(exact_nll_nats=exact["mean"], exact_nll_nats_stderr=exact["stderr"])
    # Differences on the same examples, with paired standard errors: do the estimators agree?
    names = [n for n in ("ism", "dsm", "ode") if n in estimates]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]] + [(n, "exact") for n in names if exact]
    res["differences"] = {}
    for a, b in pairs:
        d, se = estimate.paired_difference(estimates[a]["values"], estimates[b]["values"])
        res["differences"][f"{a}-{b}"] = {"mean": d, "stderr": se}
    for est in estimates.values():
        est.pop("values")
    if write and distributed.is_chief():
        path = os.path.join(workdir, "eval", f"{step}.json")
        write_json_atomic(path, res)
        res["path"] = path
    return res


def format_table(res):
    """The result as a plain-text table: estimator, value +- s.e., NFE / repeats, wall time."""
    unit = "bpd" if res["unit"] == "bpd" else "nats"
    rows = [("estimator", f"{unit} (lower is better)", "s.e.", "repeats/NFE", "seconds")]
    for form in FORMS:
        if f"elbo_{form}" in res:
            est = res[f"elbo_{form}"]
            rows.append((f"ELBO, {form.upper()} form ({est['time_sampling']} t)", f"{est['mean']:.5f}",
                         f"{est['stderr']:.5f}", f"{est['repeats']} rep", f"{est['seconds']:.1f}"))
    if "ode" in res:
        est = res["ode"]
        rows.append((f"ODE ({est['divergence']} trace)", f"{est['mean']:.5f}", f"{est['stderr']:.5f}",
                     f"{est['nfe']:.0f} NFE", f"{est['seconds']:.1f}"))
    if "exact_nll_nats" in res:
        rows.append(("exact -log p(x) (data)", f"{res['exact_nll_nats']:.5f}", f"{res['exact_nll_nats_stderr']:.5f}",
                     "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [f"{res['dataset']} {res['split']} split, step {res['step']}, {res['num_examples']} examples; "
           f"{res['unit']}", line(rows[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]
    if res.get("differences"):
        out.append("differences on the same examples, with paired s.e."
                   + (" (EXACT: the data's -log p(x)):" if "exact_nll_nats" in res else ":"))
        for key, v in res["differences"].items():
            a, b = key.upper().split("-")
            z = f" ({abs(v['mean']) / v['stderr']:.1f} s.e.)" if v["stderr"] > 0 else ""
            out.append(f"  {a} - {b}: {v['mean']:+.5f} +- {v['stderr']:.5f}{z}")
    return "\n".join(out)
