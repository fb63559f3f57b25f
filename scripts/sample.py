"""Sample from a checkpoint: the lambda-family Euler-Maruyama sampler or the adaptive probability-flow ODE.

    python scripts/sample.py --workdir=runs/digits --lam=0.0 --steps=1000 --num=64 [--checkpoint_step=N]
    python scripts/sample.py --workdir=runs/digits --ode --num=64

lam = 0 is the reverse SDE, lam = 1 the probability-flow ODE (by Euler steps); --ode solves that ODE with an
adaptive solver instead (Tsit5, --rtol/--atol) and reports its number of function evaluations. Writes a PNG
grid (images) or a scatter over the data density (2-D toys) and an .npz (samples in data space: images in
[0, 1]; plus lam, steps, step, nfe) to workdir/samples/ unless --out is given. Errors: one line, exit 1.
"""

import os
import time

from absl import flags

from diffvar import cli
from diffvar.errors import OptionError, check_number

flags.DEFINE_string("workdir", None, "Training workdir (holds config.json and checkpoints/).")
flags.DEFINE_string("checkpoint_step", "latest", "Checkpoint to sample from: a step number, 'latest' or 'best'.")
flags.DEFINE_float("lam", 0.0, "Sampler family parameter in [0, 1]: 0 reverse SDE ... 1 probability-flow ODE.")
flags.DEFINE_integer("steps", 1000, "Euler-Maruyama steps (>= 1).")
flags.DEFINE_integer("num", 64, "Number of samples (>= 1).")
flags.DEFINE_bool("ode", False, "Adaptive probability-flow ODE sampler (--lam and --steps do not apply).")
flags.DEFINE_float("rtol", 1e-5, "--ode: relative tolerance.")
flags.DEFINE_float("atol", 1e-5, "--ode: absolute tolerance.")
flags.DEFINE_integer("seed", 0, "Seed of the prior draw and the sampler's noise.")
flags.DEFINE_string(
    "out",
    None,
    "Output path without extension (default: workdir/samples/sample_<step>_<sampler>); writes <out>.png and <out>.npz.",
)
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main():
    check_number("--num", FLAGS.num, 1, integer=True, error=OptionError)
    if FLAGS.ode:
        if FLAGS["lam"].present or FLAGS["steps"].present:
            raise OptionError("--ode uses an adaptive solver: --lam and --steps do not apply to it")
        for flag in ("rtol", "atol"):
            check_number(f"--{flag}", FLAGS[flag].value, 0, strict=True, error=OptionError)
    else:
        check_number("--lam", FLAGS.lam, 0, 1, error=OptionError)
        check_number("--steps", FLAGS.steps, 1, integer=True, error=OptionError)
    import jax
    import numpy as np

    from diffvar import checkpoints, experiment, logs, plots

    exp, params, step, _ = checkpoints.restore_params(FLAGS.workdir, FLAGS.checkpoint_step)
    sampler = "ode" if FLAGS.ode else f"lam{FLAGS.lam:g}_steps{FLAGS.steps}"
    out = FLAGS.out or os.path.join(FLAGS.workdir, "samples", f"sample_{step:08d}_{sampler}")
    what = (
        f"adaptive ODE (rtol {FLAGS.rtol:g}, atol {FLAGS.atol:g})"
        if FLAGS.ode
        else f"lambda={FLAGS.lam:g}, {FLAGS.steps} Euler-Maruyama steps"
    )
    logs.say("sampling %d from %s step %d: %s", FLAGS.num, FLAGS.workdir, step, what)
    start = time.time()
    draw = experiment.make_sampler(
        exp, FLAGS.num, FLAGS.lam, FLAGS.steps, ode=FLAGS.ode, rtol=FLAGS.rtol, atol=FLAGS.atol
    )
    x, nfe = draw(params, jax.random.PRNGKey(FLAGS.seed))
    x, nfe = np.asarray(x), (int(nfe) if FLAGS.ode else None)
    seconds = time.time() - start
    title = f"{exp.info.name}, step {step}: " + (
        "adaptive ODE" if FLAGS.ode else f"lambda={FLAGS.lam:g}, {FLAGS.steps} steps"
    )
    plots.save_samples(
        exp.info,
        x,
        out + ".png",
        out + ".npz",
        title=title,
        step=step,
        lam=None if FLAGS.ode else FLAGS.lam,
        steps=None if FLAGS.ode else FLAGS.steps,
        ode=FLAGS.ode,
        nfe=nfe,
        seed=FLAGS.seed,
    )
    bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
    print(
        f"wrote {out}.png and {out}.npz: {FLAGS.num} samples in {seconds:.1f} s"
        + (f", NFE {nfe}" if nfe is not None else "")
        + (f"; {bad} non-finite" if bad else ""),
        flush=True,
    )


if __name__ == "__main__":
    cli.run(main)
