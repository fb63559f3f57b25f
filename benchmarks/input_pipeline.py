"""The training input pipeline's throughput against what an accelerator consumes; prints JSON.

    python benchmarks/input_pipeline.py [--seconds=5] [--batch_size=128] [--cifar_examples=10000]
        [--imagenet_examples=4000] [--accelerator_steps_per_sec=21]

Writes synthetic files in the official formats (cifar-10-binary.tar.gz; train_64x64.tar / valid_64x64.tar of
PNGs) to a temporary folder, prepares them with scripts/prepare_data.py's code (unverified), and times the
trainer's iterator, diffvar.data.make_train_iter (random flips on, as configs/cifar10.py): examples/s after one
warm-up batch, and the seconds its first batch took (reading the split into memory). The demand it is compared
with is accelerator_steps_per_sec x batch_size: by default DDPM's published 21 steps/s for its 35.7M-parameter
CIFAR-10 U-Net at batch 128 on a TPU v3-8 (Ho et al. 2020, appendix B), the same network as configs/cifar10.py;
ImageNet-64 networks take longer per step, so the same demand is an upper bound there.
"""

from __future__ import annotations

import io
import json
import os
import platform
import tarfile
import tempfile
import time

from absl import app, flags, logging

flags.DEFINE_float("seconds", 5.0, "Seconds of timed iteration per dataset.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("cifar_examples", 10000, "Synthetic CIFAR-10 training examples.")
flags.DEFINE_integer("imagenet_examples", 4000, "Synthetic ImageNet 64x64 training examples.")
flags.DEFINE_float(
    "accelerator_steps_per_sec",
    21.0,
    "Training steps/s the accelerator would run (default: "
    "DDPM's CIFAR-10 U-Net at batch 128 on a TPU v3-8, Ho et al. 2020).",
)
FLAGS = flags.FLAGS


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_cifar10(folder, n, rng):
    """cifar-10-binary.tar.gz with n training records spread over the five batches, 100 test records."""
    import numpy as np

    path = os.path.join(folder, "cifar-10-binary.tar.gz")
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, count in [(f"data_batch_{i}.bin", n // 5) for i in range(1, 6)] + [("test_batch.bin", 100)]:
            records = rng.integers(0, 256, (count, 3073), np.uint8)
            records[:, 0] %= 10
            _add(tar, f"cifar-10-batches-bin/{name}", records.tobytes())
    return path


def write_imagenet64(folder, n, rng):
    """train_64x64.tar (n PNGs) and valid_64x64.tar (100 PNGs) in `folder`."""
    import numpy as np
    from PIL import Image

    for prefix, count in (("train", n), ("valid", 100)):
        with tarfile.open(os.path.join(folder, f"{prefix}_64x64.tar"), "w") as tar:
            for i in range(count):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(buf, format="PNG", compress_level=1)
                _add(tar, f"{prefix}_64x64/{i:07d}.png", buf.getvalue())
    return folder


def time_iterator(name, data_dir, batch_size, seconds):
    """{"first_batch_seconds", "examples_per_sec", "batches"} of make_train_iter on a prepared dataset."""
    import ml_collections

    from diffvar import data

    cfg = ml_collections.ConfigDict({"name": name, "data_dir": data_dir, "random_flip": True})
    start = time.perf_counter()
    it = data.make_train_iter(cfg, batch_size, seed=0)
    next(it)
    first = time.perf_counter() - start
    start, batches = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        next(it)
        batches += 1
    elapsed = time.perf_counter() - start
    return {
        "first_batch_seconds": round(first, 3),
        "examples_per_sec": round(batches * batch_size / elapsed),
        "batches": batches,
    }


def main(argv):
    del argv
    import numpy as np
    import tensorflow_datasets as tfds

    from diffvar.data import prepare

    logging.set_verbosity(logging.ERROR)
    tfds.disable_progress_bar()
    rng = np.random.default_rng(0)
    demand = FLAGS.accelerator_steps_per_sec * FLAGS.batch_size
    results = {
        "batch_size": FLAGS.batch_size,
        "accelerator_steps_per_sec": FLAGS.accelerator_steps_per_sec,
        "accelerator_examples_per_sec": demand,
        "cpu_count": os.cpu_count(),
        "machine": platform.node(),
        "datasets": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        sources = {
            "cifar10": (write_cifar10(tmp, FLAGS.cifar_examples, rng), FLAGS.cifar_examples),
            "imagenet64": (write_imagenet64(tmp, FLAGS.imagenet_examples, rng), FLAGS.imagenet_examples),
        }
        for name, (source, n) in sources.items():
            data_dir = os.path.join(tmp, "tfds")
            start = time.perf_counter()
            prepare.prepare(name, data_dir, source=source, unverified=True, out=io.StringIO())
            r = {"train_examples": n, "prepare_seconds": round(time.perf_counter() - start, 2)}
            r.update(time_iterator(name, data_dir, FLAGS.batch_size, FLAGS.seconds))
            r["headroom"] = round(r["examples_per_sec"] / demand, 1)
            results["datasets"][name] = r
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)
