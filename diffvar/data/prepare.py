"""Preparing the benchmark datasets from their official files: checked, offline if asked, atomic.

    builder = prepare("cifar10", data_dir, source="~/Downloads")       # a folder of official files, or one file
    builder = prepare("mnist", data_dir)                                # TFDS's download manager (needs network)

Every file's sha256 is checked against checksums.tsv before anything is written; `unverified=True` accepts
other files and the prepared dataset records `verified: False` in its metadata (diffvar.data.label reads
it). TFDS writes into `<dataset>/incomplete.*` and renames it into place only when every split is written:
a failed or interrupted preparation leaves nothing the trainer takes as prepared, and running again
prepares from scratch. Bad files raise DataNotPreparedError with one line naming the file.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import sys
import time

import requests
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import download_manager

from diffvar.data import builders
from diffvar.errors import DataNotPreparedError, OptionError

FILE_FORMAT = "array_record"
_HASH_CHUNK = 1 << 23


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Prints `what: done/total (pct), ETA h:mm:ss` lines to `out`, at most every `every` seconds per task."""

    def __init__(self, out=sys.stdout, every: float = 5.0, unit: str = ""):
        self.out, self.every, self.unit = out, every, unit
        self._start, self._last = {}, {}

    def __call__(self, what: str, done: float, total: float):
        now = time.monotonic()
        start = self._start.setdefault(what, now)
        if now - self._last.get(what, start) < self.every and done < total:
            return
        self._last[what] = now
        frac = done / total if total else 1.0
        eta = (now - start) * (1 - frac) / frac if frac > 0 else float("nan")
        eta_text = "done" if done >= total else (f"ETA {_duration(eta)}" if eta == eta else "ETA ?")
        counts = f"{done:,.0f}/{total:,.0f}{self.unit} " if self.unit is not None else ""
        print(f"  {what}: {counts}({100 * frac:.0f}%), {eta_text}", file=self.out, flush=True)


def sha256(path: str, progress=None) -> str:
    """The hex sha256 of a file, reporting progress in bytes."""
    digest, total, done = hashlib.sha256(), os.path.getsize(path), 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(f"sha256 {os.path.basename(path)}", done, total)
    return digest.hexdigest()


def command(name: str, data_dir: str, source: str | None = None) -> str:
    """The shell command that prepares dataset `name` into `data_dir`."""
    src = f" --source={shlex.quote(source)}" if source else ""
    return f"python scripts/prepare_data.py --dataset={name}{src} --data_dir={shlex.quote(data_dir)}"


def _describe(files) -> str:
    return ", ".join(f"{f.name} ({f.size:,} bytes, sha256 {f.sha256})" for f in files)


def _source_paths(name: str, files, source: str) -> dict:
    """{official name: path} from --source: a folder of the official files, or the one file of a dataset."""
    source = os.path.expanduser(source)
    if os.path.isfile(source):
        if len(files) != 1:
            raise OptionError(f"--source={source} is a file, but {name} is {len(files)} files: place "
                              f"{', '.join(f.name for f in files)} in a folder and pass --source=FOLDER")
        return {files[0].name: source}
    if not os.path.isdir(source):
        raise OptionError(f"--source={source} does not exist; pass a folder holding {_describe(files)}")
    missing = [f for f in files if not os.path.isfile(os.path.join(source, f.name))]
    if missing:
        raise DataNotPreparedError(f"--source={source} lacks {', '.join(f.name for f in missing)}; {name} "
                                   f"needs {_describe(files)}")
    return {f.name: os.path.join(source, f.name) for f in files}


def _check_digests(files, paths: dict, unverified: bool, progress) -> builders.Source:
    """sha256 of every file against the recorded one; a mismatch raises unless `unverified`."""
    found = {f.name: sha256(paths[f.name], progress) for f in files}
    wrong = [f for f in files if found[f.name] != f.sha256]
    if wrong and not unverified:
        f = wrong[0]
        raise DataNotPreparedError(f"{paths[f.name]}: sha256 {found[f.name]} does not match the official "
                                   f"{f.name}'s {f.sha256} (--unverified accepts other files, and every number "
                                   f"computed on them is marked unverified)")
    return builders.Source(paths, not wrong, found)


def _download(builder, name: str, files, data_dir: str) -> builders.Source:
    """The official files through TFDS's download manager (which checks their sha256)."""
    if not builder.URLS_ALIVE:
        raise DataNotPreparedError(
            f"{name}'s files cannot be downloaded (their URLs, {', '.join(f.url for f in files)}, are dead: "
            f"tensorflow/datasets#4662): place {_describe(files)} in a folder FOLDER and run "
            f"`{command(name, data_dir, 'FOLDER')}`")
    dl = tfds.download.DownloadManager(download_dir=os.path.join(data_dir, "downloads"), url_infos=builder.url_infos,
                                       dataset_name=builder.name)
    try:
        paths = dl.download({f.name: f.url for f in files})
    except download_manager.NonMatchingChecksumError as e:
        raise DataNotPreparedError(" ".join(str(e).split())) from None
    except (requests.RequestException, OSError) as e:
        raise DataNotPreparedError(
            f"could not download {name} ({type(e).__name__}: {' '.join(str(e).split())[:300]}); download "
            f"{_describe(files)} by hand into a folder FOLDER and run "
            f"`{command(name, data_dir, 'FOLDER')}`") from None
    return builders.Source({k: os.fspath(p) for k, p in paths.items()}, True, {f.name: f.sha256 for f in files})


def prepare(name: str, data_dir: str, source: str | None = None, unverified: bool = False, out=sys.stdout):
    """Prepares dataset `name` (a key of builders.BUILDERS) in `data_dir`; returns the prepared builder."""
    if name not in builders.BUILDERS:
        raise OptionError(f"--dataset={name!r} is not allowed; choose one of {', '.join(builders.BUILDERS)}")
    data_dir = os.path.expanduser(data_dir)
    builder = builders.make(name, data_dir)
    if builder.is_prepared():
        print(f"{name} is already prepared in {builder.data_dir}", file=out, flush=True)
        return builder
    files = builder.official_files()
    progress = Progress(out, unit=None)
    if source is not None:
        builder.source = _check_digests(files, _source_paths(name, files, source), unverified, progress)
    else:
        builder.source = _download(builder, name, files, data_dir)
    builder.progress = Progress(out, unit=" examples")
    print(f"preparing {name} ({builder.name}) in {data_dir}"
          f"{'' if builder.source.verified else ' from UNVERIFIED files'}", file=out, flush=True)
    builder.download_and_prepare(file_format=FILE_FORMAT, download_dir=os.path.join(data_dir, "downloads"))
    builder = builders.make(name, data_dir)
    counts = ", ".join(f"{s} {v.num_examples:,}" for s, v in builder.info.splits.items())
    print(f"prepared {name}: {counts} examples in {builder.data_dir}"
          f"{'' if builders.verified(builder) else ' (UNVERIFIED files)'}", file=out, flush=True)
    return builder
