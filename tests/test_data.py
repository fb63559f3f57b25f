"""Data pipelines: TF-free TFDS preparation of digits, the shared grain pipeline, toy densities (the benchmark
datasets' builders are tested in test_datasets.py)."""

import json
import math
import os
import socket
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from diffvar import data
from diffvar.data import digits, toy


def _ban_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    _ban_network(monkeypatch)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    with pytest.MonkeyPatch.context() as mp:
        _ban_network(mp)
        digits.prepare(directory)
    return directory


def cfg_for(name, data_dir="", **kw):
    return ml_collections.ConfigDict({"name": name, "data_dir": data_dir, "random_flip": False, **kw})


def take(it, k):
    return [next(it) for _ in range(k)]


# ----------------------------------------------------------------------------- digits / TFDS


def _records(directory, split):
    source = tfds.builder(digits.TFDS_NAME, data_dir=directory).as_data_source(split=split)
    exs = source.__getitems__(list(range(len(source))))
    return np.stack([e["image"] for e in exs]), np.array([e["index"] for e in exs])


def test_digits_prepares_offline_without_tensorflow(digits_dir):
    assert "tensorflow" not in sys.modules  # TFDS wrote and reads array_record without TF
    version_dir = epath.Path(digits_dir) / digits.TFDS_NAME / "1.0.0"
    names = sorted(p.name for p in version_dir.iterdir())
    assert any(n.startswith(f"{digits.TFDS_NAME}-train.array_record") for n in names)
    assert "dataset_info.json" in names
    info = data.get_info(cfg_for("digits", digits_dir))
    assert info == data.DataInfo("digits", (8, 8, 1), 17, 1500, 297, None)
    for split, n in (("train", 1500), ("test", 297)):
        x = data.load_split(cfg_for("digits", digits_dir), split)
        assert x.shape == (n, 8, 8, 1) and x.dtype == np.uint8
        assert x.max() == 16 and x.min() == 0


def test_digits_splits_disjoint_and_deterministic(digits_dir, tmp_path):
    from sklearn.datasets import load_digits

    train_x, train_i = _records(digits_dir, "train")
    test_x, test_i = _records(digits_dir, "test")
    assert set(train_i).isdisjoint(test_i) and len(set(train_i) | set(test_i)) == 1797
    np.testing.assert_array_equal(np.sort(test_i), np.sort(digits.split_indices("test")))
    np.testing.assert_array_equal(test_x[:, :, :, 0], load_digits().images[test_i].astype(np.uint8))
    digits.prepare(str(tmp_path))  # a second, independent preparation: same records, same order
    for split, (x, i) in (("train", (train_x, train_i)), ("test", (test_x, test_i))):
        x2, i2 = _records(str(tmp_path), split)
        np.testing.assert_array_equal(i, i2)
        np.testing.assert_array_equal(x, x2)


def test_digits_preparation_survives_interruption(tmp_path, monkeypatch):
    root = tmp_path / digits.TFDS_NAME
    (root / "incomplete.KILLED_1.0.0").mkdir(parents=True)  # as left by a SIGKILLed run
    original = digits.SklearnDigits._generate_examples

    def crash_midway(self, split):
        for k, ex in enumerate(original(self, split)):
            if k == 100:
                raise RuntimeError("interrupted")
            yield ex

    monkeypatch.setattr(digits.SklearnDigits, "_generate_examples", crash_midway)
    with pytest.raises(RuntimeError, match="interrupted"):
        digits.prepare(str(tmp_path))
    assert not (root / "1.0.0").exists()  # nothing half-written where readers look
    assert sorted(p.name for p in root.iterdir()) == ["incomplete.KILLED_1.0.0"]
    monkeypatch.setattr(digits.SklearnDigits, "_generate_examples", original)
    info = data.get_info(cfg_for("digits", str(tmp_path)))
    assert (info.num_train, info.num_test) == (1500, 297)


def test_data_dir_default(monkeypatch):
    monkeypatch.setenv("DIFFVAR_DATA_DIR", "~/somewhere")
    assert data.data_dir(cfg_for("digits")) == os.path.expanduser("~/somewhere")
    assert data.data_dir(ml_collections.ConfigDict({"name": "digits"})) == os.path.expanduser("~/somewhere")
    monkeypatch.delenv("DIFFVAR_DATA_DIR")
    assert data.data_dir(cfg_for("digits")) == os.path.expanduser("~/tensorflow_datasets")
    assert data.data_dir(cfg_for("digits", "/x/y")) == "/x/y"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "imagenet32", "imagenet64"])
def test_unprepared_dataset_fails_fast(tmp_path, name):
    directory = str(tmp_path / "tfds")
    cfg = cfg_for(name, directory)
    for call in (lambda: data.get_info(cfg), lambda: data.make_train_iter(cfg, 8, 0), lambda: data.label(cfg, "test")):
        with pytest.raises(data.DataNotPreparedError) as err:
            call()
        msg = str(err.value)
        assert directory in msg
        source = " --source=FOLDER" if name.startswith("imagenet") else ""
        assert f"`python scripts/prepare_data.py --dataset={name}{source} --data_dir={directory}`" in msg
    assert isinstance(err.value, ValueError)
    assert not os.path.exists(directory)  # nothing downloaded, nothing created


def test_label_of_toys_and_digits(digits_dir):
    assert data.label(cfg_for("moons"), "train") == {
        "name": "moons",
        "builder": "toy",
        "version": toy.VERSION,
        "split": "train",
        "num_examples": 65536,
        "verified": True,
    }
    assert data.label(cfg_for("digits", digits_dir), "test") == {
        "name": "digits",
        "builder": "sklearn_digits",
        "version": "1.0.0",
        "split": "test",
        "num_examples": 297,
        "verified": True,
    }
    with pytest.raises(ValueError, match="valid"):
        data.label(cfg_for("moons"), "valid")


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match=r"data\.name='imagenet'.*digits.*imagenet64.*checkerboard"):
        data.get_info(cfg_for("imagenet"))
    with pytest.raises(ValueError, match=r"data\.name"):
        data.make_train_iter(cfg_for("imagenet"), 8, 0)
    with pytest.raises(ValueError, match=r"'valid'.*train, test"):
        data.iterate_split(cfg_for("moons"), "valid", 8)
    with pytest.raises(ValueError, match="batch_size"):
        data.make_train_iter(cfg_for("moons"), 10, 0, shard_index=0, shard_count=4)
    with pytest.raises(ValueError, match="batch_size"):
        data.iterate_split(cfg_for("moons"), "test", 10, shard_count=4)


# ----------------------------------------------------------------------------- train iterator


def test_train_iter_seeded(digits_dir):
    cfg = cfg_for("digits", digits_dir)
    a, b, c = (take(data.make_train_iter(cfg, 32, s), 5) for s in (3, 3, 4))
    assert all(x.shape == (32, 8, 8, 1) and x.dtype == np.float32 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))
    assert all(np.array_equal(x, np.round(x)) and x.min() >= 0 and x.max() <= 16 for x in a)


def test_train_iter_epochs_are_reshuffled_permutations():
    cfg = cfg_for("gmm2d")
    train = data.load_split(cfg, "train")
    batches = take(data.make_train_iter(cfg, 8192, 0), 16)  # two epochs of 65536
    key = lambda a: a[np.lexsort(a.T)]
    epoch0, epoch1 = np.concatenate(batches[:8]), np.concatenate(batches[8:])
    np.testing.assert_array_equal(key(epoch0), key(train))
    np.testing.assert_array_equal(key(epoch1), key(train))
    assert not np.array_equal(epoch0, epoch1)


def test_train_iter_restore(digits_dir):
    cfg = cfg_for("digits", digits_dir, random_flip=True)
    it = data.make_train_iter(cfg, 64, 7)
    take(it, 30)  # crosses an epoch boundary (1500 / 64 = 23.4 batches)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 5)
    restored = data.make_train_iter(cfg, 64, 7)
    restored.set_state(state)
    assert all(np.array_equal(x, y) for x, y in zip(expected, take(restored, 5)))
    # The state is shard-independent: a 2-way sharded run resumes the same global stream.
    half = data.make_train_iter(cfg, 64, 7, shard_index=1, shard_count=2)
    half.set_state(state)
    np.testing.assert_array_equal(next(half), expected[0][32:])
    with pytest.raises(ValueError, match="seed"):
        data.make_train_iter(cfg, 64, 8).set_state(state)


@pytest.mark.parametrize("name", ["digits", "moons"])
def test_train_iter_sharding_matches_global_batch(digits_dir, name):
    cfg = cfg_for(name, digits_dir)
    full = take(data.make_train_iter(cfg, 24, 1), 3)
    shards = [take(data.make_train_iter(cfg, 24, 1, shard_index=i, shard_count=3), 3) for i in range(3)]
    for k in range(3):
        assert shards[0][k].shape[0] == 8
        np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), full[k])


def test_random_flip(digits_dir):
    plain = take(data.make_train_iter(cfg_for("digits", digits_dir), 256, 0), 2)
    flipped = take(data.make_train_iter(cfg_for("digits", digits_dir, random_flip=True), 256, 0), 2)
    x, y = np.concatenate(plain), np.concatenate(flipped)
    same = np.all(x == y, axis=(1, 2, 3))
    mirrored = np.all(x[:, :, ::-1] == y, axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 0.35 < np.mean(~same) < 0.65  # about half are flipped (symmetric images count as unflipped)
    with pytest.raises(ValueError, match="random_flip"):
        data.make_train_iter(cfg_for("moons", random_flip=True), 8, 0)


# ----------------------------------------------------------------------------- iterate_split


def test_iterate_split_covers_test_once(digits_dir):
    cfg = cfg_for("digits", digits_dir)
    test = data.load_split(cfg, "test").astype(np.float32)
    batches = list(data.iterate_split(cfg, "test", 64))
    assert len(batches) == 5 and all(x.shape == (64, 8, 8, 1) and m.shape == (64,) for x, m in batches)
    xs = np.concatenate([x for x, _ in batches])
    ms = np.concatenate([m for _, m in batches])
    assert ms.sum() == 297 and ms[:297].all() and not ms[297:].any()
    np.testing.assert_array_equal(xs[ms], test)
    sharded = [list(data.iterate_split(cfg, "test", 64, shard_index=i, shard_count=2)) for i in range(2)]
    for k, (x, m) in enumerate(batches):
        np.testing.assert_array_equal(np.concatenate([s[k][0] for s in sharded]), x)
        np.testing.assert_array_equal(np.concatenate([s[k][1] for s in sharded]), m)


def test_iterate_split_toy_train():
    cfg = cfg_for("swissroll")
    xs, ms = zip(*data.iterate_split(cfg, "train", 10000))
    x, m = np.concatenate(xs)[np.concatenate(ms)], np.concatenate(ms)
    assert m.sum() == toy.NUM_TRAIN
    np.testing.assert_array_equal(x, data.load_split(cfg, "train"))


# ----------------------------------------------------------------------------- toys


@pytest.mark.parametrize("name", toy.TOY_DATASETS)
def test_toys_deterministic(name):
    a, b, c = toy.sample(name, 1000, 5), toy.sample(name, 1000, 5), toy.sample(name, 1000, 6)
    assert a.shape == (1000, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    train, test = toy.load_split(name, "train"), toy.load_split(name, "test")
    assert train.shape == (65536, 2) and test.shape == (8192, 2)
    assert not np.array_equal(train[:8192], test)
    assert np.abs(train).max() < 10
    info = data.get_info(cfg_for(name))
    assert (info.shape, info.levels, info.num_train, info.num_test) == ((2,), None, 65536, 8192)
    assert (info.exact_logp is not None) == (name == "gmm2d")


def test_gmm2d_exact_logp():
    import jax

    h = 0.02
    g = np.arange(-8, 8, h) + h / 2
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    logp = toy.gmm_logp(grid)
    p = np.exp(logp)
    assert abs(p.sum() * h * h - 1.0) < 1e-4  # integrates to 1
    # Independent evaluation: the isotropic formula written out, no Cholesky.
    var = toy.GMM2D_COVS[:, 0, 0]
    sq = np.sum((grid[:, None, :] - toy.GMM2D_MEANS) ** 2, -1)
    direct = np.sum(toy.GMM2D_WEIGHTS * np.exp(-sq / (2 * var)) / (2 * np.pi * var), axis=1)
    np.testing.assert_allclose(p, direct, rtol=1e-10, atol=1e-300)
    # jnp version, jitted, agrees with numpy.
    info = data.get_info(cfg_for("gmm2d"))
    x = toy.load_split("gmm2d", "test")
    np.testing.assert_allclose(np.asarray(jax.jit(info.exact_logp)(x)), toy.gmm_logp(x), rtol=1e-5, atol=1e-5)
    # Entropy: quadrature vs Monte Carlo, and the test split is drawn from this density.
    entropy_grid = -np.sum(p * logp) * h * h
    entropy_mc, stderr = toy.gmm_entropy(1 << 18)
    assert abs(entropy_mc - entropy_grid) < 4 * stderr + 1e-3
    test_logp = toy.gmm_logp(x)
    assert abs(-test_logp.mean() - entropy_grid) < 4 * test_logp.std() / math.sqrt(len(x))


def test_digits_concurrent_preparation(tmp_path, monkeypatch):
    """Another process finishing first while we prepare: we end up reading its (identical) data."""
    original = digits.SklearnDigits._split_generators
    calls = []

    def racing(self, dl_manager):
        if not calls:
            calls.append(1)
            digits.SklearnDigits(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
        return original(self, dl_manager)

    monkeypatch.setattr(digits.SklearnDigits, "_split_generators", racing)
    builder = digits.prepare(str(tmp_path))
    assert calls and builder.is_prepared()
    assert len(builder.as_data_source(split="test")) == 297
    assert [p.name for p in (tmp_path / digits.TFDS_NAME).iterdir()] == ["1.0.0"]


def test_non_random_access_format_is_reported(digits_dir, tmp_path):
    """A dataset prepared as tfrecord (TFDS's default) cannot be read without TF: say how to convert."""
    import shutil

    shutil.copytree(os.path.join(digits_dir, digits.TFDS_NAME), tmp_path / digits.TFDS_NAME)
    info_path = tmp_path / digits.TFDS_NAME / "1.0.0" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(data.DataNotPreparedError, match="(?s)stored as tfrecord.*tfds convert_format") as err:
        data.load_split(cfg_for("digits", str(tmp_path)), "test")
    assert str(tmp_path) in str(err.value)
