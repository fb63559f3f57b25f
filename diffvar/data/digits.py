"""scikit-learn's 8x8 digits as a TFDS dataset (`sklearn_digits`), prepared offline as array_record.

`load_digits()` ships inside scikit-learn, so this builder needs no network: 1797 images of
8x8 pixels with integer values 0..16 (K = 17 levels). A fixed permutation (seed `SPLIT_SEED`)
splits them into train (1500) and test (297). Features: image uint8 [8, 8, 1], label (0..9),
index (the row in `load_digits()`, so splits can be checked for disjointness).

Writing needs no TensorFlow: TFDS 4.9.10 serialises examples with its own copy of the
tf.Example protos (`tensorflow_datasets.proto`), and the array_record writer is pure
array_record. `download_and_prepare` writes into `<dir>/sklearn_digits/incomplete.XXXX_1.0.0`
and renames it to `<dir>/sklearn_digits/1.0.0` only when every split is written, so an
interrupted preparation leaves no half-written dataset behind (at most an `incomplete.*`
folder, which TFDS ignores). Record order is fixed by TFDS's hash of the example keys (the
`load_digits` row), so two preparations give identical splits.

Prepare ahead of time (e.g. on a shared file system before a multi-host run) with
    python -c "from diffvar.data import digits; digits.prepare('DIR')"
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from diffvar.data.builders import Builder

TFDS_NAME = "sklearn_digits"
LEVELS = 17
NUM_TRAIN = 1500
NUM_TEST = 297
SPLIT_SEED = 0
FILE_FORMAT = "array_record"


def split_indices(split: str) -> np.ndarray:
    """Rows of `load_digits()` in `split` ("train": 1500, "test": 297), from a fixed permutation."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(NUM_TRAIN + NUM_TEST)
    return {"train": perm[:NUM_TRAIN], "test": perm[NUM_TRAIN:]}[split]


class SklearnDigits(Builder):
    """scikit-learn's 8x8 handwritten digits (values 0..16), fixed 1500/297 train/test split."""

    name = TFDS_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 1500/297 split from permutation seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly (not via dataset_info_from_configs, which reads metadata files that a
        # builder living outside the TFDS source tree does not have).
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
            citation="Alpaydin, E. and Kaynak, C. (1998). Optical Recognition of Handwritten Digits. UCI.",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split):
        from sklearn.datasets import load_digits  # imported here: only needed when preparing

        digits = load_digits()
        images = digits.images.astype(np.uint8)[..., None]  # float 0..16 -> uint8, exact
        for i in split_indices(split):
            i = int(i)
            yield i, {"image": images[i], "label": int(digits.target[i]), "index": i}


def prepare(data_dir: str) -> SklearnDigits:
    """Returns the builder for `data_dir`, preparing the dataset there (array_record) if needed.

    Safe against interruption (TFDS writes to a temporary folder and renames it) and against
    another process preparing the same folder at the same time (the loser of the final rename
    re-reads the winner's data).
    """
    builder = SklearnDigits(data_dir=data_dir)
    if builder.is_prepared():
        return builder
    try:
        builder.download_and_prepare(file_format=FILE_FORMAT, download_dir=os.path.join(data_dir, "downloads"))
    except OSError:
        # Lost a race: someone else renamed their finished folder into place first.
        builder = SklearnDigits(data_dir=data_dir)
        if not builder.is_prepared():
            raise
        return builder
    return SklearnDigits(data_dir=data_dir)
