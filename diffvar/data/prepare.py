"""Preparing the benchmark datasets from their official files: checked, offline if asked, atomic.

    builder = prepare("cifar10", data_dir, source="~/Downloads")       # a folder of official files, or one file
    builder = prepare("mnist", data_dir)                                # TFDS's download manager (needs network)

Every file's sha256 is checked against checksums.tsv before anything is written, and where it differs, the sha256
of its decompressed payload against payloads.tsv (a faithful re-compression, such as Debian's Fashion-MNIST,
verifies by content); `unverified=True` accepts other files and the prepared dataset records `verified: False` in
its metadata (diffvar.data.label reads it), beside which digest each file matched and where the files came from.
Without a source, the folders a system package installs the files into are looked in first (Debian's
/usr/share/datasets/fashion-mnist), then the files are downloaded; offline, that fails within seconds. TFDS writes
into `<dataset>/incomplete.*` and renames it into place only when every split is written: a failed or interrupted
preparation leaves nothing the trainer takes as prepared, and running again prepares from scratch. Bad files raise
DataNotPreparedError with one line naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shlex
import socket
import sys
import time
import urllib.parse
import zlib

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


def sha256(path: str, progress=None, decompress: bool = False) -> str:
    """The hex sha256 of a file (of its gzip payload if `decompress`), reporting progress in file bytes."""
    digest, total = hashlib.sha256(), os.path.getsize(path)
    what = f"sha256 {os.path.basename(path)}{' payload' if decompress else ''}"
    with open(path, "rb") as raw, gzip.open(raw) if decompress else raw as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            if progress:
                progress(what, raw.tell(), total)
    return digest.hexdigest()


def _match(f: builders.OfficialFile, path: str, progress) -> tuple[str, str | None]:
    """(the file's sha256, which recorded digest it matches: "archive", "payload" or None). The payload is
    hashed only when the archive differs and payloads.tsv has its digest; an unreadable gzip matches nothing."""
    found = sha256(path, progress)
    if found == f.sha256:
        return found, "archive"
    if f.payload_sha256 is None:
        return found, None
    try:
        return found, "payload" if sha256(path, progress, decompress=True) == f.payload_sha256 else None
    except (OSError, EOFError, zlib.error):  # not a (complete) gzip file
        return found, None


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
            raise OptionError(
                f"--source={source} is a file, but {name} is {len(files)} files: place "
                f"{', '.join(f.name for f in files)} in a folder and pass --source=FOLDER"
            )
        return {files[0].name: source}
    if not os.path.isdir(source):
        raise OptionError(f"--source={source} does not exist; pass a folder holding {_describe(files)}")
    missing = [f for f in files if not os.path.isfile(os.path.join(source, f.name))]
    if missing:
        raise DataNotPreparedError(
            f"--source={source} lacks {', '.join(f.name for f in missing)}; {name} needs {_describe(files)}"
        )
    return {f.name: os.path.join(source, f.name) for f in files}


def _check_digests(files, paths: dict, unverified: bool, progress, origin: str) -> builders.Source:
    """Every file against its recorded archive sha256, else its payload's; a mismatch raises unless `unverified`."""
    found, matched = {}, {}
    for f in files:
        found[f.name], matched[f.name] = _match(f, paths[f.name], progress)
    wrong = [f for f in files if matched[f.name] is None]
    if wrong and not unverified:
        f = wrong[0]
        payload = (
            f" and its decompressed payload does not match the official payload's {f.payload_sha256}"
            if f.payload_sha256
            else ""
        )
        raise DataNotPreparedError(
            f"{paths[f.name]}: sha256 {found[f.name]} does not match the official "
            f"{f.name}'s {f.sha256}{payload} (--unverified accepts other files, and every "
            f"number computed on them is marked unverified)"
        )
    return builders.Source(paths, not wrong, found, matched, origin)


def _system_folder(builder, files):
    """The first of builder.SYSTEM_FOLDERS that holds every official file, or None."""
    for folder in builder.SYSTEM_FOLDERS:
        if all(os.path.isfile(os.path.join(folder, f.name)) for f in files):
            return folder
    return None


def _reachable(files, timeout: float) -> None:
    """Raises OSError unless a connection to every host of the files' URLs opens within `timeout` seconds (TFDS's
    download manager retries for minutes, silently, where there is no network)."""
    for host, port in sorted(
        {
            (u.hostname, u.port or (443 if u.scheme == "https" else 80))
            for u in (urllib.parse.urlsplit(f.url) for f in files)
        }
    ):
        socket.create_connection((host, port), timeout=timeout).close()


def _download(builder, name: str, files, data_dir: str, timeout: float = 10.0) -> builders.Source:
    """The official files through TFDS's download manager (which checks their sha256)."""
    package = f"install them with `{builder.SYSTEM_PACKAGE}` and re-run, or " if builder.SYSTEM_PACKAGE else ""
    if not builder.URLS_ALIVE:
        raise DataNotPreparedError(
            f"{name}'s files cannot be downloaded (their URLs, {', '.join(f.url for f in files)}, are dead: "
            f"tensorflow/datasets#4662): place {_describe(files)} in a folder FOLDER and run "
            f"`{command(name, data_dir, 'FOLDER')}`"
        )

    def cannot_download(e, what=""):
        return DataNotPreparedError(
            f"could not download {name} ({what}{type(e).__name__}: {' '.join(str(e).split())[:300]}): {package}"
            f"download {_describe(files)} by hand into a folder FOLDER and run "
            f"`{command(name, data_dir, 'FOLDER')}`"
        )

    try:
        _reachable(files, timeout)
    except OSError as e:
        raise cannot_download(e, f"cannot reach {urllib.parse.urlsplit(files[0].url).hostname}: ") from None
    dl = tfds.download.DownloadManager(
        download_dir=os.path.join(data_dir, "downloads"), url_infos=builder.url_infos, dataset_name=builder.name
    )
    try:
        paths = dl.download({f.name: f.url for f in files})
    except download_manager.NonMatchingChecksumError as e:
        raise DataNotPreparedError(" ".join(str(e).split())) from None
    except (requests.RequestException, OSError) as e:
        raise cannot_download(e) from None
    return builders.Source.downloaded({k: os.fspath(p) for k, p in paths.items()}, files)


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
    if source is None and (source := _system_folder(builder, files)) is not None:
        print(f"found {name}'s files in {source} (installed by `{builder.SYSTEM_PACKAGE}`)", file=out, flush=True)
    if source is not None:
        origin = os.path.abspath(os.path.expanduser(source))
        builder.source = _check_digests(files, _source_paths(name, files, source), unverified, progress, origin)
    else:
        builder.source = _download(builder, name, files, data_dir)
    builder.progress = Progress(out, unit=" examples")
    print(
        f"preparing {name} ({builder.name}) in {data_dir}{'' if builder.source.verified else ' from UNVERIFIED files'}",
        file=out,
        flush=True,
    )
    builder.download_and_prepare(file_format=FILE_FORMAT, download_dir=os.path.join(data_dir, "downloads"))
    builder = builders.make(name, data_dir)
    counts = ", ".join(f"{s} {v.num_examples:,}" for s, v in builder.info.splits.items())
    matched = sorted(set(builders.provenance(builder).get("matched", {}).values()) - {None})
    how = f" (verified by {' and '.join(matched)} sha256)" if builders.verified(builder) else " (UNVERIFIED files)"
    print(f"prepared {name}: {counts} examples in {builder.data_dir}{how}", file=out, flush=True)
    return builder
