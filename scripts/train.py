"""Train a diffusion model as a likelihood model.

    python scripts/train.py --config=configs/digits.py --workdir=runs/digits [--config.optim.lr=1e-3 ...]

Re-running on the same workdir resumes from its latest checkpoint. SIGTERM saves a checkpoint and exits 0.
Multi-host: start one process per host with --coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ and diffvar/

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples; re-use it to resume.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0 (jax.distributed).")
flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", 0, "Multi-host: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import jax
    if FLAGS.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from diffvar.train import ConfigError, NonFiniteLossError, train
    try:
        summary = train(FLAGS.config, FLAGS.workdir)
    except (ConfigError, NonFiniteLossError) as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if jax.process_index() == 0 and not summary.get("interrupted"):
        unit = "bpd" if "test_bpd" in summary else "nats"
        result = (f"test {unit} {summary[f'test_{unit}']:.4f} +- {summary[f'test_{unit}_stderr']:.4f}"
                  if f"test_{unit}" in summary else "no evaluation")
        if "test_gap_nats" in summary:
            result += f" (gap to exact log p: {summary['test_gap_nats']:.4f} +- {summary['test_gap_nats_stderr']:.4f} nats)"
        print(f"done: step {summary['step']} in {summary['minutes']:.1f} min | {result} | "
              f"samples {summary.get('samples')} | checkpoints {summary['checkpoints']}", flush=True)


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)
