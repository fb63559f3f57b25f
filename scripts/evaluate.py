"""Evaluate a checkpoint for likelihood: ELBO (ISM and DSM forms) and the probability-flow ODE.

    python scripts/evaluate.py --workdir=runs/digits [--checkpoint_step=N|best|latest] [--repeats=8]
        [--form=both|ism|dsm] [--time_sampling=uniform|importance] [--probe=rademacher|gaussian]
        [--noode] [--ode_rtol=1e-5 --ode_atol=1e-5] [--ode_step_size=batch|per_example] [--target_stderr=0.01] [--max_examples=N]
        [--dequantization=uniform|truncated_normal] [--importance_samples=K]
        [--draws=N] [--stratified] [--probes=P]

Restores the run's config.json and the checkpoint's EMA parameters (read-only), evaluates the whole split
sharded over all devices, prints a table and writes workdir/eval/<step>.json. Values are bits/dim for
images and nats per example for the 2-D toys, each with its standard error over examples and repeats.
Options left unset take the run's eval config; with them (and --max_examples=eval.max_examples) the ISM
ELBO equals the test metric the trainer logged at that step. Errors: one line `error: ...`, exit status 1.
Multi-host: one process per host with --coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""
from absl import flags

from diffvar import cli

flags.DEFINE_string("workdir", None, "Training workdir (holds config.json and checkpoints/).")
flags.DEFINE_string("checkpoint_step", "latest", "Checkpoint to evaluate: a step number, 'latest' or 'best'.")
flags.DEFINE_string("split", None, "Split to evaluate: train | test (default: the run's eval.split).")
flags.DEFINE_integer("repeats", None, "ELBO draws per example (default: the run's eval.repeats).")
flags.DEFINE_string("form", "both", "ELBO form(s): ism | dsm | both.")
flags.DEFINE_string("time_sampling", None, "ELBO time proposal: uniform | importance (default: the run's "
                    "eval.time_sampling for ISM, importance for DSM).")
flags.DEFINE_string("probe", None, "Hutchinson probe: rademacher | gaussian (default: the run's eval.probe).")
flags.DEFINE_string("divergence", None, "ISM divergence: hutchinson | exact (default: the run's eval.divergence).")
flags.DEFINE_bool("ode", True, "Also compute the exact likelihood of the probability-flow ODE (--noode: skip).")
flags.DEFINE_float("ode_rtol", 1e-5, "ODE solver relative tolerance.")
flags.DEFINE_float("ode_atol", 1e-5, "ODE solver absolute tolerance.")
flags.DEFINE_string("ode_divergence", "auto", "ODE trace: auto (exact up to 16 dims, else hutchinson) | exact | "
                    "hutchinson.")
flags.DEFINE_string("ode_step_size", None, "ODE step-size control: batch (one for the whole batch) | per_example "
                    "(each example its own solve; default: EvalSpec's).")
flags.DEFINE_float("target_stderr", 0.0, "Keep adding ELBO repeats until the standard error is at most this "
                   "(0: exactly --repeats).")
flags.DEFINE_integer("max_repeats", 1000, "Upper limit on ELBO repeats with --target_stderr.")
flags.DEFINE_integer("max_examples", 0, "Evaluate only the first N examples of the split (0: all).")
flags.DEFINE_integer("batch_size", None, "Global batch size (default: the run's eval.batch_size).")
flags.DEFINE_integer("seed", None, "Seed of the evaluation's random draws (default: the run's, config.seed + 1, "
                     "as in the trainer's periodic evaluation).")
flags.DEFINE_string("dequantization", None, "Images: uniform (at t = 0) | truncated_normal (at t_eps, i-DODE's) | "
                    "auto (matched to the run's data.dequantization) "
                    "(default: the run's eval.dequantization); docs/likelihood.md.")
flags.DEFINE_integer("importance_samples", None, "K dequantization samples per example of the ODE's importance-"
                     "weighted bound, exact trace (1: the plain bound; the ELBO rows are always K = 1; default: "
                     "the run's eval.importance_samples).")
flags.DEFINE_integer("draws", None, "ELBO draws averaged into one unit per example and pass, K = 1 (default: the "
                     "run's eval.draws).")
flags.DEFINE_bool("stratified", None, "Stratify the draws' times (one per stratum of equal mass; default: the run's "
                  "eval.stratified).")
flags.DEFINE_integer("probes", None, "Hutchinson probes per time point (default: the run's eval.probes).")
flags.DEFINE_bool("quiet", False, "No progress lines.")
cli.define_multihost_flags()
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main():
    cli.initialize(cli.model_of(FLAGS.workdir))
    from diffvar import distributed, evaluate
    res = evaluate.run_eval(
        FLAGS.workdir, FLAGS.checkpoint_step, split=FLAGS.split, forms=(FLAGS.form,), repeats=FLAGS.repeats,
        time_sampling=FLAGS.time_sampling, probe=FLAGS.probe, divergence=FLAGS.divergence, ode=FLAGS.ode,
        ode_rtol=FLAGS.ode_rtol, ode_atol=FLAGS.ode_atol, ode_divergence=FLAGS.ode_divergence,
        target_stderr=FLAGS.target_stderr, max_repeats=FLAGS.max_repeats, max_examples=FLAGS.max_examples,
        batch_size=FLAGS.batch_size, seed=FLAGS.seed, dequantization=FLAGS.dequantization,
        importance_samples=FLAGS.importance_samples, draws=FLAGS.draws, stratified=FLAGS.stratified,
        probes=FLAGS.probes, ode_step_size=FLAGS.ode_step_size,
        progress=not FLAGS.quiet)
    if distributed.is_chief():
        print(evaluate.format_table(res), flush=True)
        print(f"wrote {res['path']}", flush=True)


if __name__ == "__main__":
    cli.run(main)
