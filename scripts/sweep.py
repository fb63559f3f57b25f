"""Run a hyperparameter sweep declared in a config file (get_hyper), one trainer process per trial (the
installed package's diffvar-sweep).

    python scripts/sweep.py --config=configs/gmm2d.py --workdir=runs/sweep [--sweep=NAME]
        [--config.key=value ...] [--parallel=N] [--shard=i/n] [--dry_run] [--report]
        [--executor=local|slurm] [--max_retries=2] [--retry_failed]

--config.* overrides are the base of every trial. Each trial trains in DIR/<its overrides>; re-running the
same command skips finished trials and resumes the others from their checkpoints. SIGTERM / Ctrl-C stop the
running trials (they checkpoint) and write the results. DIR/results.csv, results.md and results.png are
rebuilt after every trial and by --report at any time. Errors print one line `error: ...` and exit 1.
"""

from diffvar.commands import sweep

if __name__ == "__main__":
    sweep.start()
