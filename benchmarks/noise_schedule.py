"""A learned noise schedule against the fixed VP: paired test bpd, the training loss's variance, time per step.

    python benchmarks/noise_schedule.py --pairs=FIXED:LEARNED[,FIXED:LEARNED...] [--repeats=8] [--draws=4]
        [--out=F.json]

Each pair is two training workdirs of the same config and seed, one with sde.name = vp and one with learned_vp.
For each: the test-set ISM ELBO (bpd or nats) of both final EMA checkpoints with the same random numbers (the
evaluation's key depends only on the seed and step), so the paired difference learned - fixed and its s.e. come
from per-example differences; the variance of the objective's per-example loss at the final EMA parameters over
8 training batches (what the schedule's interior is trained to lower); and the median steps/s of metrics.jsonl.
Prints one JSON line (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffvar import checkpoints, data as data_lib, distributed, experiment
from diffvar.evaluator import EvalSpec, Evaluator
from diffvar.passes import paired_difference


def loss_variance(exp, params, batches=8):
    """Variance of the per-example training loss over `batches` training batches (fixed keys)."""
    c = exp.config
    it = data_lib.make_train_iter(c.data, c.training.batch_size, c.seed)
    fn = jax.jit(lambda p, x, k: experiment.per_example_loss(exp, p, x, k))
    losses = [fn(params, jnp.asarray(next(it)), jax.random.PRNGKey(i)) for i in range(batches)]
    return float(np.var(np.concatenate([np.asarray(v, np.float64) for v in losses])))


def steps_per_sec(workdir):
    """Median steps/s over a workdir's metrics.jsonl records."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rates = [r["steps_per_sec"] for r in map(json.loads, f) if "steps_per_sec" in r]
    return float(np.median(rates))


def run(workdir, mesh, repeats, draws):
    """{ELBO mean and s.e., per-example values, loss variance, steps/s} of a workdir's final EMA checkpoint."""
    exp, params, step, _ = checkpoints.restore_params(workdir, "latest", mesh)
    spec = EvalSpec.from_config(exp.config, forms=("ism",), repeats=repeats, draws=draws, stratified=draws > 1)
    est = Evaluator(exp, mesh, spec).run(params, step)
    return {
        "workdir": workdir,
        "sde": exp.config.sde.name,
        "objective": exp.config.objective.name,
        "step": step,
        "unit": exp.unit,
        "elbo": est["ism"]["mean"],
        "elbo_stderr": est["ism"]["stderr"],
        "values": est["ism"]["values"],
        "loss_variance": loss_variance(exp, params),
        "steps_per_sec": steps_per_sec(workdir),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", required=True, help="FIXED:LEARNED workdir pairs, comma-separated")
    p.add_argument("--repeats", type=int, default=8, help="passes over the test set")
    p.add_argument("--draws", type=int, default=4, help="ELBO draws per example and pass (stratified if > 1)")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args()
    mesh, rows = distributed.make_mesh(), []
    for pair in args.pairs.split(","):
        fixed, learned = (run(w, mesh, args.repeats, args.draws) for w in pair.split(":"))
        diff, se = paired_difference(learned.pop("values"), fixed.pop("values"))
        rows.append({"fixed": fixed, "learned": learned, "learned_minus_fixed": diff, "learned_minus_fixed_stderr": se})
    out = json.dumps(
        {"repeats": args.repeats, "draws": args.draws, "device_kind": jax.devices()[0].device_kind, "pairs": rows}
    )
    print(out, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(out + "\n")


if __name__ == "__main__":
    main()
