"""The probability-flow ODE with one step size per batch against one per example; prints JSON.

    nice python benchmarks/ode_steps.py --workdir=runs/readme [--max_examples=64 --batch_size=64]

Both are experiment.make_ode_fn (the evaluation's function: uniform dequantization, the Hutchinson trace for
the digits' 64 dimensions, rtol = atol = 1e-5) on the same test examples, keys and checkpoint, timed side by
side in this process after one compiling call each: per batch, the solver's NFE (per_example: the largest over
the batch, which sets the number of loop iterations), the wall time, and the largest difference between the
two's per-example bpd (they solve the same ODE to the same tolerance).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from diffvar import checkpoints, distributed, evaluator, experiment
from diffvar.ode import OdeOptions


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="runs/readme")
    p.add_argument("--max_examples", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    a = p.parse_args()
    mesh = distributed.make_mesh()
    exp, params, step, _ = checkpoints.restore_params(a.workdir, "latest", mesh)
    batches = evaluator.split_batches(exp, mesh, "test", a.batch_size, a.max_examples)
    res = {"step": step, "device": jax.devices()[0].device_kind, "batch_size": a.batch_size}
    values = {}
    for mode in ("batch", "per_example"):
        fn = experiment.make_ode_fn(exp, OdeOptions(divergence="hutchinson", step_size=mode))
        start = time.perf_counter()
        jax.block_until_ready(fn(params, batches[0][0], jax.random.PRNGKey(0)))
        compile_and_first = time.perf_counter() - start
        rows, vals = [], []
        for i, (x, mask) in enumerate(batches):
            start = time.perf_counter()
            v, nfe = jax.block_until_ready(fn(params, x, jax.random.PRNGKey(i)))
            rows.append({"nfe": int(nfe), "seconds": time.perf_counter() - start})
            vals.append(np.asarray(v, np.float64)[np.asarray(mask)])
        values[mode] = np.concatenate(vals)
        res[mode] = {
            "batches": rows,
            "seconds": sum(r["seconds"] for r in rows),
            "first_call_seconds": compile_and_first,
            "bpd": float(values[mode].mean()),
        }
    res["num_examples"] = int(values["batch"].size)
    res["max_abs_bpd_difference"] = float(np.max(np.abs(values["batch"] - values["per_example"])))
    res["time_ratio_per_example_over_batch"] = res["per_example"]["seconds"] / res["batch"]["seconds"]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
