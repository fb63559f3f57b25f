"""Run a hyperparameter sweep declared in a config file (get_hyper), one trainer process per trial.

    diffvar-sweep --config=configs/gmm2d.py --workdir=runs/sweep [--sweep=NAME]
        [--config.key=value ...] [--parallel=N] [--shard=i/n] [--dry_run] [--report]
        [--executor=local|slurm] [--max_retries=2] [--retry_failed]

--config.* overrides are the base of every trial. Each trial trains in DIR/<its overrides>; re-running the
same command skips finished trials and resumes the others from their checkpoints. SIGTERM / Ctrl-C stop the
running trials (they checkpoint) and write the results. DIR/results.csv, results.md and results.png are
rebuilt after every trial and by --report at any time. Errors print one line `error: ...` and exit 1.
"""

from __future__ import annotations

import ast
import shlex
import sys

from absl import flags
from ml_collections import config_flags

from diffvar import cli
from diffvar.errors import OptionError, check_choice

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py) declaring get_hyper.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Sweep directory: one trial workdir each, results.csv/.md/.png.")
flags.DEFINE_string("sweep", None, "Named sweep of the config's get_hyper(h, name) (default: the unnamed one).")
flags.DEFINE_integer("parallel", 1, "Trials run at once, each pinned to its share of the cores (or its GPUs).")
flags.DEFINE_string("shard", None, "i/n: run only trials i, i+n, i+2n, ... (0-based), e.g. one per machine.")
flags.DEFINE_bool("dry_run", False, "List the trials, their workdirs and commands; run nothing.")
flags.DEFINE_bool("report", False, "Only rebuild results.csv/.md/.png from the trial workdirs (any time).")
flags.DEFINE_string("executor", "local", "local (subprocesses) | slurm (one submitit job per trial).")
flags.DEFINE_integer("max_retries", 2, "Re-runs of a crashing trial (deterministic failures are not retried).")
flags.DEFINE_bool("retry_failed", False, "Also re-run trials recorded failed (e.g. after fixing the trainer).")
flags.DEFINE_string("trainer", None, "Trainer command prefix (default: this python -m diffvar.commands.train).")
flags.DEFINE_bool("validate", True, "Check each trial's full config with the trainer's validation first.")
flags.DEFINE_string("slurm_partition", None, "Slurm: partition.")
flags.DEFINE_integer(
    "slurm_timeout_min",
    24 * 60,
    "Slurm: time limit per job in minutes (preempted jobs requeue and resume from their checkpoints).",
)
flags.DEFINE_integer("slurm_nodes", 1, "Slurm: nodes per trial (multi-host training).")
flags.DEFINE_integer("slurm_gpus_per_node", 0, "Slurm: GPUs per node.")
flags.DEFINE_integer("slurm_cpus_per_task", None, "Slurm: CPU cores per task.")
flags.DEFINE_integer("slurm_mem_gb", None, "Slurm: memory per node in GB.")
flags.DEFINE_list("slurm_args", [], "Slurm: more submitit parameters, key=value,... (e.g. slurm_account=x).")
FLAGS = flags.FLAGS


EXECUTORS = ("local", "slurm")


def slurm_params() -> dict:
    """submitit's parameters from the --slurm_* flags."""
    params = {
        "timeout_min": FLAGS.slurm_timeout_min,
        "nodes": FLAGS.slurm_nodes,
        "gpus_per_node": FLAGS.slurm_gpus_per_node,
        "slurm_partition": FLAGS.slurm_partition,
        "cpus_per_task": FLAGS.slurm_cpus_per_task,
        "mem_gb": FLAGS.slurm_mem_gb,
    }
    params = {k: v for k, v in params.items() if v is not None}
    for item in FLAGS.slurm_args:
        key, sep, value = item.partition("=")
        if not sep:
            raise OptionError(f"--slurm_args item {item!r} is not key=value")
        try:
            params[key.strip()] = ast.literal_eval(value)
        except (SyntaxError, ValueError):
            params[key.strip()] = value
    return params


def main() -> None:
    if not FLAGS.workdir:
        raise OptionError("--workdir is required")
    from diffvar import sweep

    if FLAGS.report:
        sweep.report(FLAGS.workdir)
        return
    if FLAGS.config is None:
        raise OptionError("--config is required (a configs/*.py file declaring get_hyper)")
    from diffvar import config as config_lib

    check_choice("--executor", FLAGS.executor, EXECUTORS, error=OptionError)
    if FLAGS.executor == "slurm":
        executor = sweep.SlurmExecutor(slurm_params(), max_retries=FLAGS.max_retries)
    else:
        executor = sweep.LocalExecutor(FLAGS.parallel, max_retries=FLAGS.max_retries)
    shard = sweep.parse_shard(FLAGS.shard)
    declared = sweep.load(
        FLAGS.config,
        config_flags.get_config_filename(FLAGS["config"]),
        FLAGS.workdir,
        name=FLAGS.sweep,
        base=config_flags.get_override_values(FLAGS["config"]),
        check_config=config_lib.validate if FLAGS.validate else None,
        trainer=shlex.split(FLAGS.trainer) if FLAGS.trainer else sweep.TRAINER,
    )
    sweep.run(declared, executor, shard=shard, retry_failed=FLAGS.retry_failed, dry_run=FLAGS.dry_run)
    sys.stdout.flush()


def start() -> None:
    """The console script diffvar-sweep."""
    cli.run(main)


if __name__ == "__main__":
    start()
