"""TFDS builders of the likelihood benchmarks, prepared from the official files without TensorFlow.

    diffvar_mnist, diffvar_fashion_mnist   gzip'd IDX, uint8 [28, 28, 1], 10 classes, 60,000 / 10,000
    diffvar_cifar10                        cifar-10-binary.tar.gz, uint8 [32, 32, 3], 10 classes, 50,000 / 10,000
    diffvar_downsampled_imagenet/32x32     van den Oord et al. (2016): tars of PNGs, uint8 [s, s, 3], no labels,
    diffvar_downsampled_imagenet/64x64     train 1,281,149 / validation 49,999

Each reads the files TFDS's own builder reads (checksums.tsv beside this module: URL, size, sha256, name)
with the standard library and numpy, and yields the keys TFDS's builder yields: TFDS stores a split sorted
by md5(split name + key), so records and their order are TFDS's. Images are `Tensor(encoding="bytes")`
(no PNG encoder, hence no TensorFlow) and everything is written as array_record; the files are read by
diffvar.data.formats.

The files come from `builder.source` when set (diffvar.data.prepare sets it after checking digests), else
through the TFDS download manager, which checks them against checksums.tsv. payloads.tsv beside it records,
for gzip'd files known to be re-packaged (Debian's Fashion-MNIST), the sha256 and size of the decompressed
payload: a faithful re-compression verifies by content, a changed byte of data does not. `info.metadata`
records whether the files were the official ones ("verified"), their sha256, which digest each matched
("archive" or "payload") and where they came from ("origin").
"""

from __future__ import annotations

import dataclasses
import inspect
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from diffvar.data.formats import iter_png_tar, read_cifar10, read_idx_pair

_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR10_DIR = "cifar-10-batches-bin/"
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_IMAGENET_URL = "http://image-net.org/small/"
_FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder that lives outside TFDS's source tree."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10's default checks against the `importlib_resources` backport, which it only requires
        # on Python < 3.9 (so preparing a builder from outside TFDS fails without it). The class's file is
        # what that default returns for an ordinary package anyway; checksums.tsv is looked up beside it.
        return epath.Path(inspect.getfile(cls))


@dataclasses.dataclass(frozen=True)
class OfficialFile:
    """One file as TFDS records it, and its decompressed payload's digest where payloads.tsv has one."""

    name: str
    url: str
    size: int
    sha256: str
    payload_size: int | None = None
    payload_sha256: str | None = None


def _payloads() -> dict:
    """{url: (payload size, payload sha256)} from payloads.tsv (URL, size, sha256; '#' starts a comment)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "payloads.tsv")
    with open(path) as f:
        rows = [line.split() for line in f if line.strip() and not line.startswith("#")]
    return {url: (int(size), digest) for url, size, digest in rows}


@dataclasses.dataclass(frozen=True)
class Source:
    """The files a preparation reads: {official name: local path}; whether their digests matched; each file's
    archive sha256 and which recorded digest it matched ("archive", "payload", or None); where they came from."""

    paths: dict
    verified: bool
    sha256: dict
    matched: dict
    origin: str

    @classmethod
    def downloaded(cls, paths: dict, files) -> Source:
        """Files fetched by TFDS's download manager, which checked their archive sha256."""
        return cls(dict(paths), True, {f.name: f.sha256 for f in files}, {f.name: "archive" for f in files}, "download")


class OfficialFilesBuilder(Builder, skip_registration=True):
    """Reads `urls()` (recorded in checksums.tsv) from `self.source`, or downloads them."""

    source: Source | None = None
    progress = None  # callable(split, done, total) or None; set by diffvar.data.prepare
    URLS_ALIVE = True  # False: the download manager cannot fetch the files; they are placed by hand
    SYSTEM_FOLDERS: tuple = ()  # folders a system package installs the official files into, looked in first
    SYSTEM_PACKAGE = ""  # the command that installs them there

    def urls(self) -> tuple[str, ...]:
        raise NotImplementedError

    def official_files(self) -> list[OfficialFile]:
        infos, payloads = type(self).url_infos, _payloads()
        return [
            OfficialFile(infos[u].filename, u, int(infos[u].size), infos[u].checksum, *payloads.get(u, (None, None)))
            for u in self.urls()
        ]

    def _files(self, dl_manager) -> dict:
        """{official name: path}; records in info.metadata where the files came from."""
        if self.source is None:  # plain TFDS use: the download manager fetches and checks them
            files = self.official_files()
            paths = dl_manager.download({f.name: f.url for f in files})
            self.source = Source.downloaded(paths, files)
        src = self.source
        self.info.metadata.update(
            verified=src.verified, sha256=dict(src.sha256), matched=dict(src.matched), origin=src.origin
        )
        return {name: os.fspath(p) for name, p in self.source.paths.items()}

    def _tick(self, split, done, total):
        if self.progress is not None:
            self.progress(split, done, total)

    def _metadata(self):
        return tfds.core.MetadataDict()


class _IdxBuilder(OfficialFilesBuilder, skip_registration=True):
    """MNIST-format digits: gzip'd IDX, train-* is train, t10k-* is test, key = row in the file."""

    VERSION = tfds.core.Version("1.0.0")
    BASE_URL = ""
    CLASS_NAMES: tuple | None = None
    HOMEPAGE = ""
    CITATION = ""

    def urls(self):
        return tuple(self.BASE_URL + name for name in _IDX_FILES)

    def _info(self):
        label = (
            tfds.features.ClassLabel(names=list(self.CLASS_NAMES))
            if self.CLASS_NAMES
            else tfds.features.ClassLabel(num_classes=10)
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8, encoding="bytes"),
                    "label": label,
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            metadata=self._metadata(),
        )

    def _split_generators(self, dl_manager):
        files = self._files(dl_manager)
        return {
            split: self._generate_examples(
                files[f"{prefix}-images-idx3-ubyte.gz"], files[f"{prefix}-labels-idx1-ubyte.gz"], split
            )
            for split, prefix in (("train", "train"), ("test", "t10k"))
        }

    def _generate_examples(self, images_path, labels_path, split):
        images, labels = read_idx_pair(images_path, labels_path, (28, 28))
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image[..., None], "label": int(label)}
            self._tick(split, i + 1, len(images))


class Mnist(_IdxBuilder):
    """MNIST: 28x28 grayscale handwritten digits (the examples and order of TFDS's mnist 3.0.1)."""

    name = "diffvar_mnist"
    RELEASE_NOTES = {"1.0.0": "Initial release: TFDS mnist's files, keys and order, pixels as uint8 bytes."}
    BASE_URL = _MNIST_URL
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
    CITATION = "LeCun, Y., Cortes, C. and Burges, C. J. (2010). MNIST handwritten digit database."


class FashionMnist(_IdxBuilder):
    """Fashion-MNIST: 28x28 grayscale Zalando articles (the examples and order of TFDS's fashion_mnist 3.0.1)."""

    name = "diffvar_fashion_mnist"
    RELEASE_NOTES = {"1.0.0": "Initial release: TFDS fashion_mnist's files, keys and order, pixels as uint8 bytes."}
    BASE_URL = _FASHION_URL
    CLASS_NAMES = _FASHION_NAMES
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
    CITATION = "Xiao, H., Rasul, K. and Vollgraf, R. (2017). Fashion-MNIST. arXiv:1708.07747."
    SYSTEM_FOLDERS = ("/usr/share/datasets/fashion-mnist",)  # Debian's dataset-fashion-mnist (re-gzip'd files)
    SYSTEM_PACKAGE = "apt-get install dataset-fashion-mnist"


class Cifar10(OfficialFilesBuilder):
    """CIFAR-10: 32x32 colour images in 10 classes (the examples and order of TFDS's cifar10 3.0.2)."""

    name = "diffvar_cifar10"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: TFDS cifar10's binary archive, keys and order, pixels as bytes."}
    SPLIT_MEMBERS = {
        "train": tuple(f"{_CIFAR10_DIR}data_batch_{i}.bin" for i in range(1, 6)),
        "test": (f"{_CIFAR10_DIR}test_batch.bin",),
    }

    def urls(self):
        return (_CIFAR10_URL,)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8, encoding="bytes"),
                    "label": tfds.features.ClassLabel(names=list(_CIFAR10_NAMES)),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
            citation="Krizhevsky, A. (2009). Learning Multiple Layers of Features from Tiny Images.",
            metadata=self._metadata(),
        )

    def _split_generators(self, dl_manager):
        (path,) = self._files(dl_manager).values()
        return {split: self._generate_examples(path, split) for split in self.SPLIT_MEMBERS}

    def _generate_examples(self, path, split):
        images, labels = read_cifar10(path, self.SPLIT_MEMBERS[split])
        for i, (image, label) in enumerate(zip(images, labels)):  # key: running index over the batches
            yield i, {"image": image, "label": int(label)}
            self._tick(split, i + 1, len(images))


class DownsampledImagenetConfig(tfds.core.BuilderConfig):
    """32x32 or 64x64."""

    def __init__(self, *, size: int, **kwargs):
        super().__init__(name=f"{size}x{size}", **kwargs)
        self.size = size


class DownsampledImagenet(OfficialFilesBuilder):
    """Downsampled ImageNet (van den Oord et al., 2016): the version VDM's and score_flow's bpd are on.

    Not Chrabaszcz et al.'s (2017) imagenet_resized, whose bpd are lower and not comparable.
    """

    name = "diffvar_downsampled_imagenet"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: TFDS downsampled_imagenet 2.0.0's files, keys (tar member paths) "
        "and order; PNGs decoded to uint8 bytes."
    }
    BUILDER_CONFIGS = [DownsampledImagenetConfig(size=s, description=f"{s}x{s} images") for s in (32, 64)]
    URLS_ALIVE = False  # image-net.org/small is gone (tensorflow/datasets#4662, google-research/vdm#8)

    def urls(self):
        name = self.builder_config.name
        return (f"{_IMAGENET_URL}train_{name}.tar", f"{_IMAGENET_URL}valid_{name}.tar")

    def _info(self):
        s = self.builder_config.size
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8, encoding="bytes"),
                }
            ),
            homepage="http://image-net.org/small/download.php",
            citation="van den Oord, A., Kalchbrenner, N. and Kavukcuoglu, K. (2016). Pixel Recurrent Neural "
            "Networks. ICML.",
            metadata=self._metadata(),
        )

    def _split_generators(self, dl_manager):
        files = self._files(dl_manager)
        name = self.builder_config.name
        return {
            "train": self._generate_examples(files[f"train_{name}.tar"], "train"),
            "validation": self._generate_examples(files[f"valid_{name}.tar"], "validation"),
        }

    def _generate_examples(self, path, split):
        total = os.path.getsize(path)
        for key, image, done in iter_png_tar(path, self.builder_config.size):
            yield key, {"image": image}
            self._tick(split, done, total)


# Our dataset name -> (builder class, builder config name or None).
BUILDERS = {
    "mnist": (Mnist, None),
    "fashion_mnist": (FashionMnist, None),
    "cifar10": (Cifar10, None),
    "imagenet32": (DownsampledImagenet, "32x32"),
    "imagenet64": (DownsampledImagenet, "64x64"),
}


def verified(builder) -> bool:
    """Whether a prepared builder's files were the official ones (its metadata says so; False if silent)."""
    return bool((builder.info.metadata or {}).get("verified", False))


def provenance(builder) -> dict:
    """{"matched": {file: "archive" | "payload" | None}, "origin": folder or "download"} of a prepared builder,
    from its metadata ({} for datasets prepared before these were recorded)."""
    meta = builder.info.metadata or {}
    return {k: meta[k] for k in ("matched", "origin") if k in meta}


def make(name: str, data_dir: str) -> OfficialFilesBuilder:
    """The builder of dataset `name` (a key of BUILDERS) reading and writing `data_dir`."""
    cls, config = BUILDERS[name]
    return cls(data_dir=data_dir, config=config, file_format="array_record")
