"""Train a diffusion model as a likelihood model.

    diffvar-train --config=configs/digits.py --workdir=runs/digits [--config.optim.lr=1e-3 ...]

Re-running on the same workdir resumes from its latest checkpoint. SIGTERM saves a checkpoint and exits 0.
A bad config value or missing data: one `error: ...` line, exit status 1, nothing written.
Multi-host: start one process per host with --coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from diffvar import cli

config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples; re-use it to resume.")
cli.define_multihost_flags()
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main() -> None:
    config = FLAGS.config
    cli.initialize(config.model.name, (config.training.batch_size, config.eval.batch_size))
    from diffvar import distributed, logs, train

    summary = train.train(config, FLAGS.workdir)
    if distributed.is_chief() and not summary.get("interrupted"):
        unit, key = summary["unit"], logs.metric_key(summary["unit"])
        result = (
            f"test {unit} {summary[key]:.4f} +- {summary[f'{key}_stderr']:.4f}" if key in summary else "no evaluation"
        )
        if "test_gap_nats" in summary:
            result += (
                f" (gap to exact log p: {summary['test_gap_nats']:.4f} +- {summary['test_gap_nats_stderr']:.4f} nats)"
            )
        print(
            f"done: step {summary['step']} in {summary['minutes']:.1f} min | {result} | "
            f"samples {summary.get('samples')} | checkpoints {summary['checkpoints']}",
            flush=True,
        )


def start() -> None:
    """The console script diffvar-train."""
    cli.run(main)


if __name__ == "__main__":
    start()
