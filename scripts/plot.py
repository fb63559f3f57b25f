"""Plot a run's training curves (loss, and test bpd/nats with a +-2 s.e. band, against step).

    python scripts/plot.py --workdir=runs/digits [--out=curves.png]

Reads workdir/metrics.jsonl (while training runs, too) and writes workdir/curves.png unless --out is given.
Once a checkpoint exists it also writes workdir/noise_schedule.png: gamma(s) of the latest checkpoint's (EMA)
schedule (with a learned one, against its fixed reference VP).
"""

import os

from absl import flags

from diffvar import cli
from diffvar.errors import CheckpointError, WorkdirError

flags.DEFINE_string("workdir", None, "Training workdir (holds metrics.jsonl).")
flags.DEFINE_string("out", None, "Output PNG (default: workdir/curves.png).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main():
    from diffvar import checkpoints, logs, plots

    metrics = os.path.join(FLAGS.workdir, "metrics.jsonl")
    if not os.path.isfile(metrics):
        raise WorkdirError(f"no metrics.jsonl in {FLAGS.workdir!r}: is it a diffvar training workdir?")
    out = FLAGS.out or os.path.join(FLAGS.workdir, "curves.png")
    plots.save_training_curves(out, metrics)
    print(f"wrote {out} ({len(logs.read_metrics(metrics))} records)", flush=True)
    try:
        exp, params, step, _ = checkpoints.restore_params(FLAGS.workdir, "latest")
    except CheckpointError as e:
        print(f"noise_schedule.png not written: {e}", flush=True)
        return
    path = os.path.join(FLAGS.workdir, "noise_schedule.png")
    plots.save_noise_schedule(path, exp.sde_of(params), exp.schedule.reference)
    print(f"wrote {path} (the schedule at step {step})", flush=True)


if __name__ == "__main__":
    cli.run(main)
