"""Evaluate a checkpoint for likelihood: ELBO (ISM and DSM forms) and the probability-flow ODE.

    python scripts/evaluate.py --workdir=runs/digits [--checkpoint_step=N|best|latest] [--repeats=8]
        [--form=both|ism|dsm] [--time_sampling=uniform|importance] [--probe=rademacher|gaussian]
        [--draws=N] [--stratified] [--probes=P] [--t_eps=1e-3]
        [--noode] [--ode_rtol=1e-5 --ode_atol=1e-5] [--ode_step_size=batch|per_example] [--ode_divergence=auto]
        [--dequantization=uniform|truncated_normal|auto] [--importance_samples=K] [--truncated_normal_t=1e-3]
        [--target_stderr=0.01] [--max_examples=N]

Restores the run's config.json and the checkpoint's EMA parameters (read-only), evaluates the whole split
sharded over all devices, prints a table and writes workdir/eval/<step>.json. Values are bits/dim for
images and nats per example for the 2-D toys, each with its standard error over examples and repeats.
Options left unset take the run's eval config; with them (and --max_examples=eval.max_examples) the ISM
ELBO equals the test metric the trainer logged at that step. Errors: one line `error: ...`, exit status 1.
Every estimator option is a field of elbo.ElboOptions, ode.OdeOptions (--ode_<name>) or
dequantization.DequantizationOptions, whose help lines are the flags' (--helpfull lists them).
Multi-host: one process per host with --coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""

from absl import flags

from diffvar import cli
from diffvar.evaluate import estimator_flags

flags.DEFINE_string("workdir", None, "Training workdir (holds config.json and checkpoints/).")
flags.DEFINE_string("checkpoint_step", "latest", "Checkpoint to evaluate: a step number, 'latest' or 'best'.")
flags.DEFINE_string("split", None, "Split to evaluate: train | test (default: the run's eval.split).")
flags.DEFINE_integer("repeats", None, "Passes: independent ELBO units per example (default: the run's eval.repeats).")
flags.DEFINE_string("form", "both", "ELBO form(s): ism | dsm | both.")
flags.DEFINE_bool("ode", True, "Also compute the exact likelihood of the probability-flow ODE (--noode: skip).")
flags.DEFINE_float(
    "target_stderr", 0.0, "Keep adding ELBO repeats until the standard error is at most this (0: exactly --repeats)."
)
flags.DEFINE_integer("max_repeats", 1000, "Upper limit on ELBO repeats with --target_stderr.")
flags.DEFINE_integer("max_examples", 0, "Evaluate only the first N examples of the split (0: all).")
flags.DEFINE_integer("batch_size", None, "Global batch size (default: the run's eval.batch_size).")
flags.DEFINE_integer(
    "seed",
    None,
    "Seed of the evaluation's random draws (default: the run's, config.seed + 1, "
    "as in the trainer's periodic evaluation).",
)
# Every estimator option, from its one definition (elbo.ElboOptions, ode.OdeOptions, DequantizationOptions).
DEFINE = dict(str=flags.DEFINE_string, int=flags.DEFINE_integer, float=flags.DEFINE_float, bool=flags.DEFINE_bool)
for _name, (_kind, _help) in estimator_flags().items():
    DEFINE[_kind](_name, None, _help)
flags.DEFINE_bool("quiet", False, "No progress lines.")
cli.define_multihost_flags()
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main():
    cli.initialize(cli.model_of(FLAGS.workdir))
    from diffvar import distributed, evaluate

    options = {name: FLAGS[name].value for name in [*evaluate.LOOP_FLAGS, *estimator_flags()]}
    res = evaluate.run_eval(
        FLAGS.workdir, FLAGS.checkpoint_step, forms=(FLAGS.form,), ode=FLAGS.ode, progress=not FLAGS.quiet, **options
    )
    if distributed.is_chief():
        print(evaluate.format_table(res), flush=True)
        print(f"wrote {res['path']}", flush=True)


if __name__ == "__main__":
    cli.run(main)
