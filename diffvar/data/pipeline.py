"""Input pipelines: TFDS array_record images and toy 2-D densities, served through one grain pipeline.

Every dataset is a finite split held as a numpy array (images: uint8 [N, H, W, C] read once through
`builder.as_data_source()`, no TensorFlow; toys: float32 [N, 2]) and served by

    grain.MapDataset.range(num_batches).map(make_batch).to_iter_dataset(...)

where `make_batch(step)` builds global batch `step` from index arithmetic alone: position p of the
infinite stream is example perm_e[p mod N] of epoch e = p // N, with perm_e a permutation seeded by
(seed, e). A batch is therefore a pure function of (seed, step), which gives:
- reshuffling every epoch, deterministically;
- identical global batches whatever the sharding (each process keeps its rows of the global batch);
- a checkpoint that is just the step (grain's iterator state), restorable under any sharding.
(grain's element-wise `shuffle` gives the same guarantees but costs ~12 us per example in Python,
which would cap a 2-D toy run at ~150 steps/s for batch 512; the vectorised permutation costs ~0.)

`cfg` is the `data` ConfigDict: name (one of DATASETS), data_dir (str, optional), random_flip
(bool, optional).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from diffvar.data import builders, digits, prepare, toy
from diffvar.errors import DataNotPreparedError

DATASETS = ("digits", *builders.BUILDERS, *toy.TOY_DATASETS)
SPLITS = ("train", "test")
# Our split -> the TFDS split it reads, where they differ: downsampled ImageNet has no test split, and its
# bpd are reported on its validation split.
_TFDS_SPLITS = {"imagenet32": {"test": "validation"}, "imagenet64": {"test": "validation"}}
_DEFAULT_DATA_DIR = "~/tensorflow_datasets"
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
_READ_CHUNK = 1024  # records per data-source read when loading a split


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the trainer needs to know about a dataset.

    shape: per-example shape, e.g. (8, 8, 1) or (2,).
    levels: K for discrete data (17 digits, 256 the other images), None for continuous toys.
    exact_logp: jnp-traceable x [B, *shape] -> [B] log density in nats (gmm2d only), else None.
    """

    name: str
    shape: tuple
    levels: int | None
    num_train: int
    num_test: int
    exact_logp: Callable | None = None

    def size(self, split):
        """The number of examples in `split` ('train' or 'test')."""
        return {"train": self.num_train, "test": self.num_test}[split]


# ----------------------------------------------------------------------------- config


def _get(cfg, key, default=None):
    """cfg.key, or default when absent (ConfigDict, dict or any attribute holder)."""
    if hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def dataset_name(cfg) -> str:
    """cfg.name, validated against DATASETS."""
    name = _get(cfg, "name")
    if name not in DATASETS:
        raise ValueError(f"data.name={name!r} is not a known dataset; allowed values: {', '.join(DATASETS)}")
    return name


def data_dir(cfg) -> str:
    """cfg.data_dir, else $DIFFVAR_DATA_DIR, else ~/tensorflow_datasets; user-expanded."""
    path = _get(cfg, "data_dir") or os.environ.get("DIFFVAR_DATA_DIR") or _DEFAULT_DATA_DIR
    return os.path.expanduser(str(path))


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed splits: {', '.join(SPLITS)}")


def _rows(batch_size, shard_index, shard_count) -> slice:
    """This shard's rows of a global batch; validates the arguments."""
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(shard_count, (int, np.integer)) or shard_count <= 0:
        raise ValueError(f"shard_count must be a positive integer, got {shard_count!r}")
    if batch_size % shard_count:
        raise ValueError(f"batch_size={batch_size} is not divisible by shard_count={shard_count}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index!r} must be in [0, shard_count={shard_count})")
    per_shard = batch_size // shard_count
    return slice(shard_index * per_shard, (shard_index + 1) * per_shard)


# ----------------------------------------------------------------------------- TFDS


def prepare_command(name: str, directory: str) -> str:
    """The shell command that prepares image dataset `name` (our name) into `directory`."""
    if name == "digits":
        return "python -c " + shlex.quote(f"from diffvar.data import digits; digits.prepare({directory!r})")
    return prepare.command(name, directory, None if builders.make(name, directory).URLS_ALIVE else "FOLDER")


def tfds_split(name: str, split: str) -> str:
    """The TFDS split that our `split` of dataset `name` reads ("test" of imagenet64 is "validation")."""
    return _TFDS_SPLITS.get(name, {}).get(split, split)


def load_builder(name: str, directory: str) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder of image dataset `name` (our name) in `directory`.

    digits is prepared on first use (offline). The others must have been prepared by
    scripts/prepare_data.py: otherwise DataNotPreparedError, which names the command.
    """
    if name == "digits":
        builder = digits.prepare(directory)
    else:
        builder = builders.make(name, directory)  # offline: reads local metadata only
        if not builder.is_prepared():
            hint = (
                "" if builder.URLS_ALIVE else f", FOLDER holding {', '.join(f.name for f in builder.official_files())}"
            )
            raise DataNotPreparedError(
                f"dataset {name!r} ({builder.name}) is not prepared in data_dir={directory!r} (looked for "
                f"{builder.data_dir}) and is not downloaded at run time: run "
                f"`{prepare_command(name, directory)}`{hint} (--source=FOLDER prepares offline from the "
                f"official files), or point data.data_dir / $DIFFVAR_DATA_DIR at a prepared copy"
            )
    random_access = set(tfds.core.FileFormat.with_random_access())
    if not set(builder.info.available_file_formats()) & random_access:
        dataset_dir = os.path.join(directory, builder.name)
        raise DataNotPreparedError(
            f"TFDS dataset {builder.name!r} in data_dir={directory!r} is stored as "
            f"{builder.info.file_format.value}, which cannot be read without TensorFlow; it must be "
            f"array_record: convert it in place with `tfds convert_format "
            f"--dataset_dir={shlex.quote(dataset_dir)} --out_file_format=array_record`, or delete "
            f"{dataset_dir!r} and prepare it again with `{prepare_command(name, directory)}`"
        )
    return builder


def _read_images(source) -> np.ndarray:
    """All images of a TFDS data source, in stored order, as uint8 [N, H, W, C]."""
    n = len(source)
    first = np.asarray(source[0]["image"]) if n else np.zeros((0,), np.uint8)
    images = np.empty((n, *first.shape), np.uint8)
    for i in range(0, n, _READ_CHUNK):
        chunk = source.__getitems__(list(range(i, min(n, i + _READ_CHUNK))))
        images[i : i + len(chunk)] = np.stack([ex["image"] for ex in chunk])
    return images


# ----------------------------------------------------------------------------- datasets


def get_info(cfg) -> DataInfo:
    """Shape, levels, split sizes and (gmm2d) exact log density of the dataset cfg names."""
    name = dataset_name(cfg)
    if name in toy.TOY_DATASETS:
        return DataInfo(
            name=name,
            shape=(2,),
            levels=None,
            num_train=toy.NUM_TRAIN,
            num_test=toy.NUM_TEST,
            exact_logp=toy.gmm_logp_jax if name == "gmm2d" else None,
        )
    info = load_builder(name, data_dir(cfg)).info
    return DataInfo(
        name=name,
        shape=tuple(int(s) for s in info.features["image"].shape),
        levels=digits.LEVELS if name == "digits" else 256,
        num_train=info.splits[tfds_split(name, "train")].num_examples,
        num_test=info.splits[tfds_split(name, "test")].num_examples,
    )


def label(cfg, split: str) -> dict:
    """What an evaluation of `split` ran on: {"name", "builder" (TFDS name, "toy" for the 2-D toys),
    "version", "split" (the TFDS split read), "num_examples", "verified" (official files; always True for
    the toys and digits), and for prepared benchmarks "matched" ({file: "archive" | "payload" | None}, the
    digest each file matched) and "origin" (the folder the files were read from, or "download")}. Reads only
    metadata."""
    _check_split(split)
    name = dataset_name(cfg)
    if name in toy.TOY_DATASETS:
        return {
            "name": name,
            "builder": "toy",
            "version": toy.VERSION,
            "split": split,
            "num_examples": {"train": toy.NUM_TRAIN, "test": toy.NUM_TEST}[split],
            "verified": True,
        }
    builder = load_builder(name, data_dir(cfg))
    tfds_name = builder.name + (f"/{builder.builder_config.name}" if builder.builder_config else "")
    return {
        "name": name,
        "builder": tfds_name,
        "version": str(builder.version),
        "split": tfds_split(name, split),
        "num_examples": builder.info.splits[tfds_split(name, split)].num_examples,
        "verified": name == "digits" or builders.verified(builder),
        **builders.provenance(builder),
    }


def load_split(cfg, split: str) -> np.ndarray:
    """A whole split in its fixed order: uint8 [N, H, W, C] levels for images, float32 [N, 2] for toys."""
    _check_split(split)
    name = dataset_name(cfg)
    if name in toy.TOY_DATASETS:
        return toy.load_split(name, split)
    return _read_images(load_builder(name, data_dir(cfg)).as_data_source(split=tfds_split(name, split)))


def _epoch_order(seed: int, n: int) -> Callable[[int], np.ndarray]:
    """epoch -> the permutation of range(n) used in that epoch (memoised per pipeline)."""

    @functools.lru_cache(maxsize=4)
    def order(epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, 0, epoch]).permutation(n)

    return order


def _stream_indices(order, n: int, positions: np.ndarray) -> np.ndarray:
    """Example indices at `positions` of the infinite shuffled stream (epoch e uses order(e))."""
    epochs, offsets = np.divmod(positions, n)
    out = np.empty_like(positions)
    for e in np.unique(epochs):
        at = epochs == e
        out[at] = order(int(e))[offsets[at]]
    return out


def _flip_mask(seed: int, batch_size: int, step: int) -> np.ndarray:
    """[batch_size] bools: which examples of global batch `step` are flipped horizontally."""
    return np.random.default_rng([seed, 1, step]).random(batch_size) < 0.5


class TrainIterator(grain.DatasetIterator):
    """Infinite iterator of training batches with a JSON-serialisable, shard-independent state.

    A grain DatasetIterator, so grain's orbax CheckpointHandler can save and restore it.
    """

    def __init__(self, dataset: grain.MapDataset, meta: dict):
        self._inner = dataset.to_iter_dataset(_READ_OPTIONS).__iter__()
        super().__init__(self._inner)
        self._meta = dict(meta)

    def __next__(self) -> np.ndarray:
        return next(self._inner)

    def get_state(self) -> dict[str, Any]:
        """{"step": number of global batches served, plus dataset/seed/batch_size to check on restore}."""
        return {"step": int(self._inner.get_state()["next_index"]), **self._meta}

    def set_state(self, state: dict[str, Any]) -> None:
        mismatch = {k: (state.get(k), v) for k, v in self._meta.items() if state.get(k) != v}
        if mismatch:
            raise ValueError(f"iterator state does not match this pipeline (saved, current): {mismatch}")
        self._inner.set_state({"next_index": int(state["step"])})

    def __str__(self) -> str:
        return f"TrainIterator({self._meta})"


def make_train_iter(cfg, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1) -> TrainIterator:
    """Infinite, seeded, reshuffled-every-epoch iterator of float32 [batch_size // shard_count, *shape].

    Images yield their integer levels 0..K-1 as float32 (dequantisation happens later, on device),
    randomly flipped left-right when cfg.random_flip; toys yield their points. This process gets
    rows [shard_index * b, (shard_index + 1) * b) of the global batch, b = batch_size // shard_count,
    so the global batches do not depend on shard_count.
    """
    rows = _rows(batch_size, shard_index, shard_count)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed, batch_size = int(seed), int(batch_size)
    name = dataset_name(cfg)
    flip = bool(_get(cfg, "random_flip", False))
    if flip and name in toy.TOY_DATASETS:
        raise ValueError(f"data.random_flip=True needs image data, but data.name={name!r} is a 2-D toy")
    data = load_split(cfg, "train")
    order = _epoch_order(seed, len(data))
    offsets = np.arange(batch_size, dtype=np.int64)

    def make_batch(step: int) -> np.ndarray:
        idx = _stream_indices(order, len(data), step * batch_size + offsets)[rows]
        x = data[idx].astype(np.float32)
        if flip:
            f = _flip_mask(seed, batch_size, step)[rows]
            x[f] = x[f, :, ::-1]
        return x

    dataset = grain.MapDataset.range(sys.maxsize // batch_size).map(make_batch)
    return TrainIterator(dataset, {"dataset": name, "seed": seed, "batch_size": batch_size})


def iterate_split(cfg, split: str, batch_size: int, shard_index: int = 0, shard_count: int = 1):
    """Iterator of (x float32 [b, *shape], mask bool [b]) covering `split` once, in its fixed order.

    b = batch_size // shard_count rows of each global batch; the last global batch is padded with
    zero rows whose mask is False. Arguments are checked when called, not on first next().
    """
    _check_split(split)
    rows = _rows(batch_size, shard_index, shard_count)
    data = load_split(cfg, split)
    n = len(data)
    offsets = np.arange(batch_size, dtype=np.int64)[rows]

    def make_batch(step: int):
        pos = step * batch_size + offsets
        mask = pos < n
        x = np.zeros((len(pos),) + data.shape[1:], np.float32)
        x[mask] = data[pos[mask]]
        return x, mask

    num_batches = -(-n // batch_size)
    return grain.MapDataset.range(num_batches).map(make_batch).to_iter_dataset(_READ_OPTIONS).__iter__()
