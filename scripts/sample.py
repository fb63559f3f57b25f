"""Sample from a checkpoint: the lambda-family Euler-Maruyama sampler or the adaptive probability-flow ODE.

    python scripts/sample.py --workdir=runs/digits --lam=0.0 --steps=1000 --num=64 [--checkpoint_step=N]
    python scripts/sample.py --workdir=runs/digits --ode --num=64

lam = 0 is the reverse SDE, lam = 1 the probability-flow ODE (by Euler steps); --ode solves that ODE with an
adaptive solver instead (Tsit5, --rtol/--atol) and reports its number of function evaluations. Writes a PNG
grid (images) or a scatter over the data density (2-D toys) and an .npz (samples in data space: images in
[0, 1]; plus lam, steps, step, nfe) to workdir/samples/ unless --out is given. Errors: one line, exit 1.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ and diffvar/

from absl import app, flags, logging

from diffvar.cli import fail

flags.DEFINE_string("workdir", None, "Training workdir (holds config.json and checkpoints/).")
flags.DEFINE_string("checkpoint_step", "latest", "Checkpoint to sample from: a step number, 'latest' or 'best'.")
flags.DEFINE_float("lam", 0.0, "Sampler family parameter in [0, 1]: 0 reverse SDE ... 1 probability-flow ODE.")
flags.DEFINE_integer("steps", 1000, "Euler-Maruyama steps (>= 1).")
flags.DEFINE_integer("num", 64, "Number of samples (>= 1).")
flags.DEFINE_bool("ode", False, "Adaptive probability-flow ODE sampler (--lam and --steps do not apply).")
flags.DEFINE_float("rtol", 1e-5, "--ode: relative tolerance.")
flags.DEFINE_float("atol", 1e-5, "--ode: absolute tolerance.")
flags.DEFINE_integer("seed", 0, "Seed of the prior draw and the sampler's noise.")
flags.DEFINE_string("out", None, "Output path without extension (default: workdir/samples/sample_<step>_<sampler>); "
                    "writes <out>.png and <out>.npz.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
    from diffvar import evaluate
    try:
        if len(argv) > 1:
            raise evaluate.EvalError(f"unexpected arguments {argv[1:]}")
        if FLAGS.ode and (FLAGS["lam"].present or FLAGS["steps"].present):
            raise evaluate.EvalError("--ode uses an adaptive solver: --lam and --steps do not apply to it")
        if FLAGS.ode:
            for flag in ("rtol", "atol"):
                if not FLAGS[flag].value > 0:
                    raise evaluate.EvalError(f"--{flag}={FLAGS[flag].value!r} must be a number > 0")
            if not FLAGS.num >= 1:
                raise evaluate.EvalError(f"--num={FLAGS.num!r} must be an integer >= 1")
        else:
            evaluate.check_sampling(FLAGS.lam, FLAGS.steps, FLAGS.num)
        evaluate.parse_step(FLAGS.checkpoint_step)
        exp, params, step = evaluate.restore(FLAGS.workdir, FLAGS.checkpoint_step)
    except evaluate.EvalError as e:
        fail(e)

    import time
    import jax
    sampler = "ode" if FLAGS.ode else f"lam{FLAGS.lam:g}_steps{FLAGS.steps}"
    out = FLAGS.out or os.path.join(FLAGS.workdir, "samples", f"sample_{step:08d}_{sampler}")
    what = (f"adaptive ODE (rtol {FLAGS.rtol:g}, atol {FLAGS.atol:g})" if FLAGS.ode
            else f"lambda={FLAGS.lam:g}, {FLAGS.steps} Euler-Maruyama steps")
    evaluate.say("sampling %d from %s step %d: %s", FLAGS.num, FLAGS.workdir, step, what)
    start = time.time()
    samples, nfe = evaluate.draw_samples(exp, params, jax.random.PRNGKey(FLAGS.seed), FLAGS.num, lam=FLAGS.lam,
                                         steps=FLAGS.steps, ode=FLAGS.ode, rtol=FLAGS.rtol, atol=FLAGS.atol)
    seconds = time.time() - start
    title = f"{exp.info.name}, step {step}: " + ("adaptive ODE" if FLAGS.ode else f"lambda={FLAGS.lam:g}, {FLAGS.steps} steps")
    evaluate.save_samples(exp, samples, out + ".png", out + ".npz", title=title, step=step,
                          lam=None if FLAGS.ode else FLAGS.lam, steps=None if FLAGS.ode else FLAGS.steps,
                          ode=FLAGS.ode, nfe=nfe, seed=FLAGS.seed)
    import numpy as np
    bad = int((~np.isfinite(samples)).reshape(len(samples), -1).any(axis=1).sum())
    print(f"wrote {out}.png and {out}.npz: {FLAGS.num} samples in {seconds:.1f} s"
          + (f", NFE {nfe}" if nfe is not None else "") + (f"; {bad} non-finite" if bad else ""), flush=True)


if __name__ == "__main__":
    logging.set_verbosity(logging.ERROR)
    app.run(main)
