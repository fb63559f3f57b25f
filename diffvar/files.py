"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never a part."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import uuid

from diffvar.errors import WorkdirError


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path next to `path`; moves it onto `path` if the block succeeds, else removes it."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Not tempfile.mkstemp: its files are mode 0600; os.open with 0o666 honours the umask like a plain open.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json_atomic(path, obj):
    """Writes obj as indented JSON to path, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=float)
        f.write("\n")


@contextlib.contextmanager
def exclusive(directory):
    """Holds directory/.lock for the block, or raises WorkdirError naming the process that holds it.

    fcntl.flock: the kernel releases the lock when its process dies (SIGKILL included), so a lock left by a
    dead process never blocks the next start. The file holds the holder's pid and host, for the message.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            raise WorkdirError(
                f"workdir {directory} is in use by {holder}: wait for it to finish, stop it, or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        os.close(fd)  # releases the lock
