"""The programs' edge (diffvar/cli.py): the workaround for orbax's abandoned reads lives here and only here."""

import glob
import logging
import os
import sys
import threading
import types

from diffvar import cli


def traceback_through(filename):
    """A traceback whose innermost frame runs in a file called `filename`."""
    code = compile("def read():\n    raise RuntimeError('abandoned')\nread()\n", filename, "exec")
    try:
        exec(code, {})
    except RuntimeError as e:
        return e, e.__traceback__


def test_only_orbaxs_abandoned_reads_are_dropped(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(("unraisable", u.exc_traceback)))
    monkeypatch.setattr(threading, "excepthook", lambda a: seen.append(("thread", a.exc_traceback)))
    asyncio_log = logging.getLogger("asyncio")
    monkeypatch.setattr(asyncio_log, "filters", list(asyncio_log.filters))
    cli.quiet_orbax_abandoned_reads()
    cli.quiet_orbax_abandoned_reads()  # once is enough: a second call wraps nothing
    orbax_error, orbax_tb = traceback_through("/venv/site-packages/orbax/checkpoint/_src/serialization/x.py")
    own_error, own_tb = traceback_through(os.path.join(os.path.dirname(cli.__file__), "x.py"))
    for tb in (orbax_tb, own_tb):
        sys.unraisablehook(types.SimpleNamespace(exc_traceback=tb))
        threading.excepthook(types.SimpleNamespace(exc_traceback=tb))
    assert seen == [("unraisable", own_tb), ("thread", own_tb)]

    def shown(error, tb):
        record = logging.LogRecord(
            "asyncio", logging.ERROR, __file__, 1, "Task exception was never retrieved", None, (type(error), error, tb)
        )
        return asyncio_log.filter(record)

    assert not shown(orbax_error, orbax_tb) and shown(own_error, own_tb)


def test_the_library_swaps_no_hooks_and_re_executes_nothing():
    """Process-wide changes belong to the program's edge: no module of the library but cli.py makes one."""
    package = os.path.dirname(cli.__file__)
    for path in glob.glob(os.path.join(package, "**", "*.py"), recursive=True):
        text = open(path).read()
        for trick in ("sys.unraisablehook", "threading.excepthook", "os.execv", 'getLogger("asyncio")'):
            assert trick not in text or path == cli.__file__, (path, trick)
