"""Hyperparameter sweeps: declarations (get_hyper in a config file), the runner, and the results.

    from diffvar import sweep
    declared = sweep.load(config, "configs/gmm2d.py", "runs/sweep")  # config: the file's get_config()
    sweep.run(declared, sweep.LocalExecutor(parallel=2))

declarations is the `h` of get_hyper(h, name); runner plans and runs the trials through an executor
(LocalExecutor or SlurmExecutor); store reads and writes the trials' state; results makes results.csv, .md
and .png from it.
"""

from diffvar.sweep.executors import LocalExecutor, SlurmExecutor
from diffvar.sweep.runner import TRAINER, load, parse_shard, report, run

__all__ = ["LocalExecutor", "SlurmExecutor", "TRAINER", "load", "parse_shard", "report", "run"]
