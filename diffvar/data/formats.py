"""The official files' formats, read with the standard library, numpy and PIL (no TensorFlow).

    read_idx, read_idx_pair    gzip'd IDX of unsigned bytes (MNIST, Fashion-MNIST)
    read_cifar10               cifar-10-binary.tar.gz: 1 label byte + 3,072 channel-major bytes per record
    iter_png_tar, tar_key      a tar of PNGs (downsampled ImageNet), keyed as TFDS's iter_archive keys members

A file that is not what its format says raises DataNotPreparedError, naming the file and what is wrong.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

from diffvar.errors import DataNotPreparedError


def _fail(path: str, what: str):
    raise DataNotPreparedError(f"{path}: {what}")


def read_idx(path: str, shape: tuple) -> np.ndarray:
    """A gzip'd IDX file of unsigned bytes (MNIST's format) as uint8 [N, *shape]."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        _fail(path, f"not a complete gzip file ({e})")
    ndim = 1 + len(shape)
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        _fail(path, f"not an IDX file of unsigned bytes with {ndim} dimensions (header {data[:4].hex()})")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != tuple(shape):
        _fail(path, f"holds arrays of shape {dims[1:]}, expected {tuple(shape)}")
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        _fail(path, f"has {len(body)} bytes of data, its header {dims} says {int(np.prod(dims))}")
    return np.frombuffer(body, np.uint8).reshape(dims)


def read_idx_pair(images_path: str, labels_path: str, image_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, *image_shape], labels uint8 [N]) from two IDX files of the same split."""
    images, labels = read_idx(images_path, image_shape), read_idx(labels_path, ())
    if len(images) != len(labels):
        _fail(labels_path, f"has {len(labels)} labels for the {len(images)} images of {images_path}")
    if labels.size and labels.max() > 9:
        _fail(labels_path, f"holds label {labels.max()}; labels are 0..9")
    return images, labels


def read_cifar10(path: str, members: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 32, 32, 3], labels uint8 [N]) of `members` of cifar-10-binary.tar.gz, in order.

    A record is 1 label byte and 3,072 bytes: the R, G and B planes of 32x32 (channel-major).
    """
    blobs = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                if m.name in members:
                    blobs[m.name] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        _fail(path, f"not a complete .tar.gz archive ({e})")
    missing = [m for m in members if m not in blobs]
    if missing:
        _fail(path, f"lacks {', '.join(missing)} (the binary version, cifar-10-binary.tar.gz, is needed)")
    data = b"".join(blobs[m] for m in members)
    if len(data) % 3073:
        _fail(path, f"{', '.join(members)}: {len(data)} bytes is not a whole number of 3,073-byte records")
    records = np.frombuffer(data, np.uint8).reshape(-1, 3073)
    if records.size and records[:, 0].max() > 9:
        _fail(path, f"holds label {records[:, 0].max()}; labels are 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0]


def tar_key(member_path: str) -> str | None:
    """The key TFDS's iter_archive gives a tar member (its normalised path), or None when TFDS skips it."""
    path = os.path.normpath(member_path)
    hidden = path.startswith(".") or os.path.isabs(path) or path.endswith("~")
    return None if hidden or os.path.basename(path).startswith(".") else path


def decode_png(data: bytes, size: int) -> np.ndarray:
    """PNG bytes -> uint8 [size, size, 3]; ValueError unless an RGB PNG of that size."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format != "PNG" or im.mode != "RGB" or im.size != (size, size):
            raise ValueError(f"a {im.size[0]}x{im.size[1]} {im.mode} {im.format}")
        return np.asarray(im)


def iter_png_tar(path: str, size: int) -> Iterator[tuple[str, np.ndarray, int]]:
    """Yields (key, uint8 [size, size, 3], bytes read so far) for each PNG of an uncompressed tar."""
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for m in tar:
                key = tar_key(m.path) if m.isfile() else None
                if key is None:
                    continue
                try:
                    image = decode_png(tar.extractfile(m).read(), size)
                except (OSError, ValueError) as e:
                    _fail(path, f"member {m.path} is not a {size}x{size} RGB PNG ({e})")
                yield key, image, f.tell()
    except (tarfile.TarError, EOFError) as e:
        _fail(path, f"not a complete tar archive ({e})")
