"""Data: TFDS-backed image pipelines (array_record, no TensorFlow), toy 2-D densities, the dataset builders.

    info = get_info(cfg)                       # DataInfo(name, shape, levels, num_train, num_test, exact_logp)
    it = make_train_iter(cfg, batch_size, seed, shard_index, shard_count)   # infinite; get_state/set_state
    for x, mask in iterate_split(cfg, "test", batch_size): ...             # one pass, padded last batch
    label(cfg, "test")                         # {"name", "builder", "version", "split", "verified", ...}
    prepare.prepare("cifar10", data_dir, source=FOLDER)                    # scripts/prepare_data.py

`cfg` is the `data` ConfigDict: name (one of DATASETS), data_dir, random_flip.
"""

from diffvar.data import builders, digits, prepare, toy
from diffvar.data.pipeline import (
    DATASETS,
    SPLITS,
    DataInfo,
    DataNotPreparedError,
    TrainIterator,
    data_dir,
    get_info,
    iterate_split,
    label,
    load_builder,
    load_split,
    make_train_iter,
    prepare_command,
    tfds_split,
)

__all__ = [
    "DATASETS",
    "builders",
    "SPLITS",
    "DataInfo",
    "DataNotPreparedError",
    "TrainIterator",
    "data_dir",
    "digits",
    "get_info",
    "iterate_split",
    "label",
    "load_builder",
    "load_split",
    "make_train_iter",
    "prepare",
    "prepare_command",
    "tfds_split",
    "toy",
]
