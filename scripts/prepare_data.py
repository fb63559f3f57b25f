"""Prepare a likelihood benchmark dataset (TFDS array_record, no TensorFlow) from its official files.

    python scripts/prepare_data.py --dataset=cifar10 [--source=PATH] [--data_dir=DIR] [--unverified]

--dataset: mnist | fashion_mnist | cifar10 | imagenet32 | imagenet64 (downsampled ImageNet, van den Oord
et al. 2016). --source: a folder holding the official files under their official names, or the one file
of a one-file dataset (cifar-10-binary.tar.gz): offline. Without it the files are downloaded (not
possible for ImageNet, whose URLs are dead: the error says which files to place where). Every file's
sha256 is checked; --unverified accepts other files and marks the dataset, and every number computed on
it, unverified. --data_dir defaults to $DIFFVAR_DATA_DIR, else ~/tensorflow_datasets (as data.data_dir).
Preparation is atomic; a bad file: one `error: ...` line, exit status 1, nothing prepared.
"""

from absl import flags

from diffvar import cli

flags.DEFINE_string("dataset", None, "mnist | fashion_mnist | cifar10 | imagenet32 | imagenet64.")
flags.DEFINE_string("source", None, "Folder of the official files (or the one file of cifar10): offline.")
flags.DEFINE_string("data_dir", "", "TFDS data_dir (default: $DIFFVAR_DATA_DIR, else ~/tensorflow_datasets).")
flags.DEFINE_bool(
    "unverified",
    False,
    "Accept files whose sha256 differs from the official ones (test "
    "fixtures, re-packed mirrors); the dataset records that it is unverified.",
)
flags.mark_flags_as_required(["dataset"])
FLAGS = flags.FLAGS


def main():
    import tensorflow_datasets as tfds

    from diffvar import data

    tfds.disable_progress_bar()  # our own progress lines, with ETA, go to stdout
    directory = data.data_dir({"data_dir": FLAGS.data_dir})
    data.prepare.prepare(FLAGS.dataset, directory, source=FLAGS.source, unverified=FLAGS.unverified)


if __name__ == "__main__":
    cli.run(main)
