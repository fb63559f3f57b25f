"""The benchmark datasets (MNIST, Fashion-MNIST, CIFAR-10, downsampled ImageNet) prepared without TensorFlow
from synthetic files written in exactly the official formats: records, labels and TFDS's order; bad files
refused with one line and nothing prepared; a few training steps and an evaluation on prepared CIFAR-10."""

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import socket
import tarfile
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from diffvar import data
from diffvar.data import builders, formats, prepare
from diffvar.errors import OptionError
from tests.helpers import ROOT, assert_one_error_line, run_script

IDX = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


# ----------------------------------------------------------------------------- official formats, written here


def write_idx(path, array):
    """MNIST's format: gzip'd IDX of unsigned bytes (0x00 0x00 0x08 ndim, big-endian dims, data)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist(folder, seed, n=(30, 10)):
    """The four official files in `folder`; returns {split: (images [N, 28, 28, 1], labels [N])}, file order."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    out = {}
    for split, prefix, size in (("train", "train", n[0]), ("test", "t10k", n[1])):
        images, labels = rng.integers(0, 256, (size, 28, 28), np.uint8), rng.integers(0, 10, size, np.uint8)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels)
        out[split] = (images[..., None], labels)
    return out


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_cifar10(path, seed, per_batch=4, test=6):
    """cifar-10-binary.tar.gz: cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin, records of 1 label
    byte + R, G, B planes of 32x32. Returns {split: (images [N, 32, 32, 3] HWC, labels [N])} in file order."""
    rng = np.random.default_rng(seed)
    out = {"train": ([], []), "test": ([], [])}
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "cifar-10-batches-bin/batches.meta.txt", b"airplane\nautomobile\n")
        batches = [(f"data_batch_{i}.bin", "train", per_batch) for i in range(1, 6)]
        batches.append(("test_batch.bin", "test", test))
        for name, split, n in batches:
            planes = rng.integers(0, 256, (n, 3, 32, 32), np.uint8)
            labels = rng.integers(0, 10, n, np.uint8)
            records = b"".join(bytes([y]) + p.tobytes() for y, p in zip(labels, planes))
            _add(tar, f"cifar-10-batches-bin/{name}", records)
            out[split][0].append(np.stack([p.transpose(1, 2, 0) for p in planes]))  # written independently: CHW -> HWC
            out[split][1].append(labels)
    return {s: (np.concatenate(x), np.concatenate(y)) for s, (x, y) in out.items()}


def png(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_png_tar(path, prefix, size, n, seed):
    """An uncompressed tar of one PNG per image, plus a directory entry and a macOS '._' file (TFDS skips
    both). Returns {member path: image [size, size, 3]}."""
    rng = np.random.default_rng(seed)
    images = {f"{prefix}/{i:07d}.png": rng.integers(0, 256, (size, size, 3), np.uint8) for i in range(n)}
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(prefix)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, image in images.items():
            _add(tar, name, png(image))
        _add(tar, f"{prefix}/._0000000.png", b"resource fork, not a PNG")
    return images


def write_imagenet(folder, size, seed, n=(12, 5)):
    os.makedirs(folder, exist_ok=True)
    train, valid = f"train_{size}x{size}", f"valid_{size}x{size}"
    return {
        "train": write_png_tar(os.path.join(folder, f"{train}.tar"), train, size, n[0], seed),
        "validation": write_png_tar(os.path.join(folder, f"{valid}.tar"), valid, size, n[1], seed + 1),
    }


def tfds_order(split, keys):
    """Keys in TFDS's stored order, computed independently: ascending md5(split name + str(key))."""
    return sorted(keys, key=lambda k: int(hashlib.md5((split + str(k)).encode()).hexdigest(), 16))


def records(data_dir, name, split):
    """The stored records of a prepared split, in order: (images, labels or None)."""
    source = builders.make(name, data_dir).as_data_source(split=split)
    exs = source.__getitems__(list(range(len(source))))
    labels = np.array([e["label"] for e in exs]) if exs and "label" in exs[0] else None
    return np.stack([e["image"] for e in exs]), labels


def cfg_for(name, data_dir):
    return ml_collections.ConfigDict({"name": name, "data_dir": data_dir, "random_flip": False})


def nothing_prepared(data_dir):
    """No dataset version folder and no incomplete.* folder anywhere under data_dir."""
    found = [
        os.path.join(r, d)
        for r, ds, _ in os.walk(data_dir)
        for d in ds
        if d.startswith("incomplete") or re.fullmatch(r"\d+\.\d+\.\d+", d)
    ]
    return not found


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Opening a connection fails as it does offline (OSError)."""

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (tests run offline)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ----------------------------------------------------------------------------- records, labels, order


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_datasets(tmp_path, name):
    files = write_mnist(tmp_path / "src", seed=len(name))
    builder = prepare.prepare(name, str(tmp_path / "d"), source=str(tmp_path / "src"), unverified=True)
    assert builder.name == f"diffvar_{name}"
    for split in ("train", "test"):
        images, labels = files[split]
        x, y = records(str(tmp_path / "d"), name, split)
        order = tfds_order(split, range(len(images)))  # key: the row in the IDX file
        np.testing.assert_array_equal(x, images[order])
        np.testing.assert_array_equal(y, labels[order])
        np.testing.assert_array_equal(data.load_split(cfg_for(name, str(tmp_path / "d")), split), images[order])
    info = data.get_info(cfg_for(name, str(tmp_path / "d")))
    assert info == data.DataInfo(name, (28, 28, 1), 256, 30, 10, None)
    assert data.label(cfg_for(name, str(tmp_path / "d")), "test") == {
        "name": name,
        "builder": f"diffvar_{name}",
        "version": "1.0.0",
        "split": "test",
        "num_examples": 10,
        "verified": False,
        "matched": {f: None for f in IDX},
        "origin": str(tmp_path / "src"),
    }
    names = builder.info.features["label"].names
    assert names[0] == ("T-shirt/top" if name == "fashion_mnist" else "0")


def test_cifar10(tmp_path):
    files = write_cifar10(tmp_path / "cifar-10-binary.tar.gz", seed=0)
    d = str(tmp_path / "d")
    prepare.prepare("cifar10", d, source=str(tmp_path / "cifar-10-binary.tar.gz"), unverified=True)
    for split, n in (("train", 20), ("test", 6)):
        images, labels = files[split]
        order = tfds_order(split, range(n))  # key: running index over data_batch_1..5 (train), test_batch (test)
        x, y = records(d, "cifar10", split)
        np.testing.assert_array_equal(x, images[order])
        np.testing.assert_array_equal(y, labels[order])
    assert data.get_info(cfg_for("cifar10", d)) == data.DataInfo("cifar10", (32, 32, 3), 256, 20, 6, None)
    assert builders.make("cifar10", d).info.features["label"].names[:2] == ["airplane", "automobile"]


@pytest.mark.parametrize("size", [32, 64])
def test_downsampled_imagenet(tmp_path, size):
    files = write_imagenet(tmp_path / "src", size, seed=size)
    d, name = str(tmp_path / "d"), f"imagenet{size}"
    prepare.prepare(name, d, source=str(tmp_path / "src"), unverified=True)
    for split in ("train", "validation"):
        x, y = records(d, name, split)
        assert y is None
        order = tfds_order(split, files[split])  # key: the tar member's path; '._*' and directories skipped
        np.testing.assert_array_equal(x, np.stack([files[split][k] for k in order]))
    cfg = cfg_for(name, d)
    assert data.get_info(cfg) == data.DataInfo(name, (size, size, 3), 256, 12, 5, None)
    np.testing.assert_array_equal(data.load_split(cfg, "test"), records(d, name, "validation")[0])
    assert data.label(cfg, "test") == {
        "name": name,
        "builder": f"diffvar_downsampled_imagenet/{size}x{size}",
        "version": "1.0.0",
        "split": "validation",
        "num_examples": 5,
        "verified": False,
        "matched": {f"{s}_{size}x{size}.tar": None for s in ("train", "valid")},
        "origin": str(tmp_path / "src"),
    }


def test_official_digests_mark_the_dataset_verified(tmp_path, monkeypatch):
    """Files whose sha256 matches the recorded one: accepted without --unverified, and recorded as verified."""
    os.makedirs(tmp_path / "src")
    write_cifar10(tmp_path / "src" / "cifar-10-binary.tar.gz", seed=1)
    digest = prepare.sha256(str(tmp_path / "src" / "cifar-10-binary.tar.gz"))
    official = builders.Cifar10.official_files
    monkeypatch.setattr(
        builders.Cifar10,
        "official_files",
        lambda self: [builders.OfficialFile(f.name, f.url, f.size, digest) for f in official(self)],
    )
    d = str(tmp_path / "d")
    prepare.prepare("cifar10", d, source=str(tmp_path / "src"))
    assert data.label(cfg_for("cifar10", d), "train")["verified"] is True
    with open(os.path.join(d, "diffvar_cifar10", "1.0.0", "metadata.json")) as f:
        assert json.load(f)["sha256"] == {"cifar-10-binary.tar.gz": digest}


def _regzip(path, mtime):
    """Re-compresses a gzip file as a re-packager does (another header: no file name, another mtime)."""
    payload = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(payload, mtime=mtime))
    return payload


def _record_payloads(monkeypatch, cls, payloads, host="fashion-mnist.s3-website.eu-central-1.amazonaws.com"):
    """cls's official files with these payloads' size and sha256 (the archives' sha256 stay the official ones)."""
    official = cls.official_files

    def files(self):
        return [
            dataclasses.replace(
                f, payload_size=len(payloads[f.name]), payload_sha256=hashlib.sha256(payloads[f.name]).hexdigest()
            )
            for f in official(self)
        ]

    monkeypatch.setattr(cls, "official_files", files)


def test_a_faithful_recompression_verifies_by_its_payload(tmp_path, monkeypatch):
    """Files re-gzip'd with another header (Debian's Fashion-MNIST): the archive sha256 differs, the payload's
    matches, so the dataset is verified, by "payload", and says where the files came from; one changed byte
    of data is refused with one line naming both digests."""
    src, d = tmp_path / "src", str(tmp_path / "d")
    write_mnist(src, seed=3)
    payloads = {f: _regzip(src / f, mtime=1591347949) for f in IDX}
    _record_payloads(monkeypatch, builders.FashionMnist, payloads)
    out = io.StringIO()
    prepare.prepare("fashion_mnist", d, source=str(src), out=out)
    label = data.label(cfg_for("fashion_mnist", d), "test")
    assert (label["verified"], label["matched"], label["origin"]) == (True, {f: "payload" for f in IDX}, str(src))
    assert "verified by payload sha256" in out.getvalue()

    changed = bytearray(payloads[IDX[2]])
    changed[-1] ^= 1
    (src / IDX[2]).write_bytes(gzip.compress(bytes(changed)))
    with pytest.raises(
        data.DataNotPreparedError,
        match=r"t10k-images-idx3-ubyte\.gz: sha256 \w+ does not match "
        r"the official .* and its decompressed payload does not match .*--unverified",
    ) as err:
        prepare.prepare("fashion_mnist", str(tmp_path / "d2"), source=str(src), out=io.StringIO())
    assert "\n" not in str(err.value) and nothing_prepared(str(tmp_path / "d2"))


def test_the_system_folder_is_looked_in_first(tmp_path, monkeypatch):
    """Without --source, Fashion-MNIST's files are read from the folder Debian's package installs them into,
    and the run says so; where that folder lacks them, the offline failure names the package."""
    system, d = tmp_path / "usr_share", str(tmp_path / "d")
    write_mnist(system, seed=4)
    _record_payloads(monkeypatch, builders.FashionMnist, {f: _regzip(system / f, mtime=0) for f in IDX})
    monkeypatch.setattr(builders.FashionMnist, "SYSTEM_FOLDERS", (str(tmp_path / "absent"), str(system)))
    out = io.StringIO()
    prepare.prepare("fashion_mnist", d, out=out)
    assert (
        f"found fashion_mnist's files in {system} (installed by `apt-get install dataset-fashion-mnist`)"
        in out.getvalue()
    )
    assert data.label(cfg_for("fashion_mnist", d), "train")["origin"] == str(system)

    monkeypatch.setattr(builders.FashionMnist, "SYSTEM_FOLDERS", (str(tmp_path / "absent"),))
    with pytest.raises(
        data.DataNotPreparedError,
        match=r"could not download fashion_mnist .*install them with "
        r"`apt-get install dataset-fashion-mnist` and re-run, or download .*--source=FOLDER",
    ):
        prepare.prepare("fashion_mnist", str(tmp_path / "d2"), out=io.StringIO())


def test_an_unreachable_host_fails_within_the_timeout(monkeypatch):
    """A download from a host that does not answer (TEST-NET-1, never routed) fails after `timeout` seconds
    with one line, instead of TFDS's minutes of silent retries."""
    monkeypatch.undo()  # the real socket: nothing answers at 192.0.2.1
    f = builders.OfficialFile("x.gz", "http://192.0.2.1/x.gz", 1, "0" * 64)
    start = time.monotonic()
    with pytest.raises(OSError):
        prepare._reachable([f], timeout=2.0)
    assert time.monotonic() - start < 5.0


DEBIAN = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="Debian's dataset-fashion-mnist is not installed")
def test_debians_fashion_mnist_is_prepared_verified(tmp_path):
    """The real archives of `apt-get install dataset-fashion-mnist`: verified by payload without --source,
    60,000 / 10,000 examples in TFDS's order (keys are rows of the files)."""
    d = str(tmp_path / "d")
    r = run_script("prepare_data", "--dataset=fashion_mnist", f"--data_dir={d}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"found fashion_mnist's files in {DEBIAN}" in r.stdout and "verified by payload sha256" in r.stdout
    cfg = cfg_for("fashion_mnist", d)
    label = data.label(cfg, "test")
    assert (label["verified"], label["origin"], label["num_examples"]) == (True, DEBIAN, 10_000)
    assert label["matched"] == {f: "payload" for f in IDX}
    assert data.get_info(cfg).num_train == 60_000
    images, labels = formats.read_idx_pair(os.path.join(DEBIAN, IDX[2]), os.path.join(DEBIAN, IDX[3]), (28, 28))
    order = tfds_order("test", range(10_000))
    x, y = records(d, "fashion_mnist", "test")
    np.testing.assert_array_equal(x[:100, ..., 0], images[order[:100]])
    np.testing.assert_array_equal(y, labels[order])


def test_checksums_tsv_records_the_official_files():
    """checksums.tsv beside the builders: URL, size and sha256 as TFDS records them."""
    b = builders.make("imagenet64", "/nonexistent")
    assert [(f.name, f.size, f.sha256[:8]) for f in b.official_files()] == [
        ("train_64x64.tar", 12112588800, "e2a2c194"),
        ("valid_64x64.tar", 477255680, "eeac03ec"),
    ]
    (cifar,) = builders.make("cifar10", "/nonexistent").official_files()
    assert (cifar.url, cifar.size, cifar.sha256[:8]) == (
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        170052171,
        "c4a38c50",
    )
    assert [f.name for f in builders.make("fashion_mnist", "/nonexistent").official_files()] == list(IDX)


# ----------------------------------------------------------------------------- bad files: one line, nothing prepared


def test_bad_files_by_script(tmp_path):
    """A truncated gzip, a wrong digest, a missing file: one error line naming the file, nothing prepared."""
    src, d = tmp_path / "src", str(tmp_path / "d")
    write_mnist(src, seed=0)
    path = src / "train-images-idx3-ubyte.gz"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    r = run_script("prepare_data", "--dataset=mnist", f"--source={src}", f"--data_dir={d}", "--unverified")
    assert_one_error_line(r, str(path), "not a complete gzip file")
    assert nothing_prepared(d)

    path.write_bytes(whole)
    found = hashlib.sha256(whole).hexdigest()
    official = "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    r = run_script("prepare_data", "--dataset=mnist", f"--source={src}", f"--data_dir={d}")
    assert_one_error_line(r, "train-images-idx3-ubyte.gz", found, official, "--unverified")
    assert nothing_prepared(d)

    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    r = run_script("prepare_data", "--dataset=mnist", f"--source={src}", f"--data_dir={d}", "--unverified")
    assert_one_error_line(r, "lacks t10k-labels-idx1-ubyte.gz")
    assert nothing_prepared(d)


def _corrupt(tmp_path, what):
    """(dataset, source) with one defect of format."""
    src = tmp_path / "src"
    if what in ("idx magic", "idx count"):
        write_mnist(src, seed=0)
        p = src / "t10k-labels-idx1-ubyte.gz"
        raw = gzip.decompress(p.read_bytes())
        raw = raw[:3] + b"\x03" + raw[4:] if what == "idx magic" else raw[:-1]
        p.write_bytes(gzip.compress(raw))
        return "mnist", src
    if what in ("cifar record", "cifar member", "cifar truncated"):
        path = tmp_path / "cifar-10-binary.tar.gz"
        write_cifar10(path, seed=0)
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        if what == "cifar truncated":
            path.write_bytes(path.read_bytes()[:-100])
            return "cifar10", path
        if what == "cifar record":
            members["cifar-10-batches-bin/data_batch_3.bin"] += b"\x00"
        else:
            del members["cifar-10-batches-bin/test_batch.bin"]
        with tarfile.open(path, "w:gz") as tar:
            for name, payload in members.items():
                _add(tar, name, payload)
        return "cifar10", path
    write_imagenet(src, 32, seed=0)
    p = src / "valid_32x32.tar"
    if what == "png size":
        with tarfile.open(p, "a") as tar:
            _add(tar, "valid_32x32/9999999.png", png(np.zeros((64, 64, 3), np.uint8)))
    else:  # truncated tar
        p.write_bytes(p.read_bytes()[:3000])
    return "imagenet32", src


@pytest.mark.parametrize(
    "what, message",
    [
        ("idx magic", "not an IDX file"),
        ("idx count", "has 9 bytes of data"),
        ("cifar record", "not a whole number of 3,073-byte records"),
        ("cifar member", "lacks cifar-10-batches-bin/test_batch.bin"),
        ("cifar truncated", "not a complete .tar.gz"),
        ("png size", "is not a 32x32 RGB PNG"),
        ("tar truncated", "not a complete tar archive"),
    ],
)
def test_wrong_formats(tmp_path, what, message):
    name, src = _corrupt(tmp_path, what)
    d = str(tmp_path / "d")
    with pytest.raises(data.DataNotPreparedError, match=message) as err:
        prepare.prepare(name, d, source=str(src), unverified=True, out=io.StringIO())
    assert "\n" not in str(err.value)
    assert nothing_prepared(d)
    with pytest.raises(data.DataNotPreparedError, match=f"prepare_data.py --dataset={name}"):
        data.get_info(cfg_for(name, d))


def test_interrupted_preparation_leaves_nothing_and_rerun_finishes(tmp_path, monkeypatch):
    write_mnist(tmp_path / "src", seed=0)
    d = str(tmp_path / "d")
    original = builders.Mnist._generate_examples

    def interrupted(self, *args):
        for k, ex in enumerate(original(self, *args)):
            if k == 5:
                raise KeyboardInterrupt
            yield ex

    monkeypatch.setattr(builders.Mnist, "_generate_examples", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare("mnist", d, source=str(tmp_path / "src"), unverified=True, out=io.StringIO())
    assert nothing_prepared(d)
    monkeypatch.setattr(builders.Mnist, "_generate_examples", original)
    out = io.StringIO()
    prepare.prepare("mnist", d, source=str(tmp_path / "src"), unverified=True, out=out)
    assert "ETA" in out.getvalue() or "done" in out.getvalue()
    assert data.get_info(cfg_for("mnist", d)).num_train == 30


def test_without_source(tmp_path, monkeypatch):
    """Offline, the download fails with one line saying what to download and how to pass it; ImageNet's
    URLs are dead, so it says which files to place in a folder."""
    from tensorflow_datasets.core.download import downloader

    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)  # TFDS retries 10 times with backoff (minutes offline)
    d = str(tmp_path / "d")
    with pytest.raises(
        data.DataNotPreparedError,
        match=r"could not download mnist.*t10k-labels-idx1-ubyte\.gz.*"
        r"--dataset=mnist --source=FOLDER",
    ) as err:
        prepare.prepare("mnist", d, out=io.StringIO())
    assert "\n" not in str(err.value)
    with pytest.raises(
        data.DataNotPreparedError,
        match=r"dead.*train_32x32\.tar \(4,113,018,880 bytes.*"
        r"valid_32x32\.tar.*--dataset=imagenet32 --source=FOLDER",
    ):
        prepare.prepare("imagenet32", d, out=io.StringIO())
    assert nothing_prepared(d)


def test_source_flag_errors(tmp_path):
    with pytest.raises(OptionError, match="does not exist"):
        prepare.prepare("cifar10", str(tmp_path / "d"), source=str(tmp_path / "nowhere"))
    (tmp_path / "one.tar").write_bytes(b"")
    with pytest.raises(OptionError, match="is a file, but imagenet64 is 2 files"):
        prepare.prepare("imagenet64", str(tmp_path / "d"), source=str(tmp_path / "one.tar"))


def test_tensorflow_is_not_installed():
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401


# ----------------------------------------------------------------------------- train and evaluate, as a user


def test_prepare_train_evaluate_cifar10(tmp_path):
    os.makedirs(tmp_path / "src")
    write_cifar10(tmp_path / "src" / "cifar-10-binary.tar.gz", seed=2)
    d, w = str(tmp_path / "d"), str(tmp_path / "w")
    r = run_script(
        "prepare_data", "--dataset=cifar10", f"--source={tmp_path / 'src'}", f"--data_dir={d}", "--unverified"
    )
    assert r.returncode == 0, r.stderr
    assert "prepared cifar10: train 20, test 6 examples" in r.stdout and "UNVERIFIED" in r.stdout
    r = run_script(
        "train",
        f"--config={ROOT}/configs/cifar10.py",
        f"--workdir={w}",
        f"--config.data.data_dir={d}",
        "--config.model.ch=8",
        "--config.model.ch_mult=(1,)",
        "--config.model.num_res_blocks=1",
        "--config.model.attn_resolutions=()",
        "--config.training.batch_size=4",
        "--config.training.num_steps=3",
        "--config.training.steps_per_call=1",
        "--config.optim.warmup_steps=1",
        "--config.training.log_every=1",
        "--config.training.ckpt_every=3",
        "--config.eval.every=0",
        "--config.eval.batch_size=6",
        "--config.sampling.every=0",
        "--config.sampling.num=2",
        "--config.sampling.steps=2",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "done: step 3" in r.stdout
    r = run_script("evaluate", f"--workdir={w}", "--form=ism", "--noode", "--repeats=1", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    (path,) = [line.split()[-1] for line in r.stdout.splitlines() if line.startswith("wrote ")]
    with open(path) as f:
        result = json.load(f)
    assert result["num_examples"] == 6 and np.isfinite(result["bpd_elbo"])  # the whole synthetic test split
    assert "cifar10" in json.dumps(result["dataset"])
