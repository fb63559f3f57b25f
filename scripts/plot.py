"""Plot a run's training curves (loss, and test bpd/nats with a +-2 s.e. band, against step).

    python scripts/plot.py --workdir=runs/digits [--out=curves.png]

Reads workdir/metrics.jsonl (while training runs, too) and writes workdir/curves.png unless --out is given.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ and diffvar/

from absl import app, flags

flags.DEFINE_string("workdir", None, "Training workdir (holds metrics.jsonl).")
flags.DEFINE_string("out", None, "Output PNG (default: workdir/curves.png).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
    from diffvar import plots
    metrics = os.path.join(FLAGS.workdir, "metrics.jsonl")
    if len(argv) > 1 or not os.path.isfile(metrics):
        print(f"error: unexpected arguments {argv[1:]}" if len(argv) > 1 else
              f"error: no metrics.jsonl in {FLAGS.workdir!r}: is it a diffvar training workdir?", file=sys.stderr)
        sys.exit(1)
    out = FLAGS.out or os.path.join(FLAGS.workdir, "curves.png")
    records = plots.read_metrics(metrics)
    plots.save_training_curves(out, metrics)
    print(f"wrote {out} ({len(records)} records)", flush=True)


if __name__ == "__main__":
    app.run(main)
