"""The README's likelihood table for one checkpoint: every dequantization convention, K = 1, 4, 16, the ELBO in
both forms (K = 1 only: at K > 1 it is not a bound) and the ODE (the exact trace at K > 1), each with its
standard error and label; and the ELBO's default against the old one.

    nice python benchmarks/likelihood_table.py --workdir=runs/readme [--ode_examples=32] [--out=runs/table.json]

Everything goes through the evaluation's own object (evaluator.Evaluator, as scripts/evaluate.py): the ELBO
on the whole test split with --repeats passes at K = 1, the ODE (at K = 1 the trace by Hutchinson's estimator
for images, one probe held along the path; at K > 1 the exact trace) on the first --ode_examples test examples
(its cost grows K-fold, and d-fold with the exact trace).
Then, on the whole split, the ISM ELBO as it was before (one draw per unit, --old_repeats passes) and with
the new default (eval.draws stratified draws per unit, old_repeats / eval.draws passes: the same draws): their
Monte-Carlo s.e. times sqrt(seconds), lower is better. Prints a markdown table, then the JSON.
"""

from __future__ import annotations

import argparse
import json
import math

from diffvar import checkpoints, distributed, evaluate, evaluator

CONVENTIONS = ("uniform", "truncated_normal")
KS = (1, 4, 16)


def estimates(exp, mesh, params, step, **spec):
    """{name: estimate} of one evaluation with EvalSpec.from_config(exp.config, **spec)."""
    ev = evaluator.Evaluator(exp, mesh, evaluator.EvalSpec.from_config(exp.config, **spec))
    out = ev.run(params, step)
    for est in out.values():
        est.pop("values", None)
    return out


def cell(est):
    return f"{est['mean']:.3f} ± {est['stderr']:.3f} ({est['seconds']:.0f} s)"


def table(workdir, repeats, ode_examples, ks=KS):
    mesh = distributed.make_mesh()
    exp, params, step, _ = checkpoints.restore_params(workdir, "latest", mesh)
    rows, out = [], {"step": step}
    for deq in CONVENTIONS:
        for k in ks:
            common = dict(dequantization=deq, importance_samples=k)
            elbo = {} if k > 1 else estimates(exp, mesh, params, step, forms=("ism", "dsm"), repeats=repeats, **common)
            ode = estimates(exp, mesh, params, step, forms=(), ode=True, max_examples=ode_examples, **common)
            out[f"{deq}_K{k}"] = dict(elbo, ode=ode["ode"])
            ism, dsm = (cell(elbo[f]) if elbo else "— (not a bound)" for f in ("ism", "dsm"))
            rows.append(f"| {deq} | {k} | {ism} | {dsm} | {cell(ode['ode'])} |")
            print(rows[-1], flush=True)  # progress: the table takes tens of minutes on 2 cores
    return exp, mesh, params, step, rows, out


def default_against_old(exp, mesh, params, step, old_repeats):
    """{old, new: ISM estimate} and the ratio of their MC s.e. x sqrt(seconds) (old over new)."""
    draws = exp.config.eval.draws
    old = estimates(exp, mesh, params, step, forms=("ism",), repeats=old_repeats, draws=1, stratified=False)["ism"]
    new = estimates(exp, mesh, params, step, forms=("ism",), repeats=old_repeats // draws)["ism"]
    cost = lambda e: e["mc_stderr"] * math.sqrt(e["seconds"])
    return {"old": old, "new": new, "mc_se_x_sqrt_seconds_old_over_new": cost(old) / cost(new)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="runs/readme")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--ode_examples", type=int, default=32)
    p.add_argument("--old_repeats", type=int, default=32)
    p.add_argument("--ks", default="1,4,16", help="importance samples K, comma-separated")
    p.add_argument("--out", default="")
    a = p.parse_args()
    ks = tuple(int(k) for k in a.ks.split(","))
    exp, mesh, params, step, rows, out = table(a.workdir, a.repeats, a.ode_examples, ks)
    out["default_against_old"] = cmp = default_against_old(exp, mesh, params, step, a.old_repeats)
    print("\n| dequantization | K | ELBO, ISM | ELBO, DSM | ODE |\n|---|---|---|---|---|\n" + "\n".join(rows))
    last = {**out.get("truncated_normal_K1", {}), **out[f"truncated_normal_K{ks[-1]}"]}
    for name in ("ism", "dsm", "ode"):
        print(f"{name.upper()}: {evaluate.describe(last[name]['label'])}")
    for name in ("old", "new"):
        e = cmp[name]
        print(
            f"{name}: {e['mean']:.4f} ± {e['stderr']:.4f} (MC {e['mc_stderr']:.4f}), {e['seconds']:.1f} s, "
            f"{evaluate.describe(e['label'])}"
        )
    print(f"MC s.e. x sqrt(s), old / new: {cmp['mc_se_x_sqrt_seconds_old_over_new']:.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1, default=str)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
