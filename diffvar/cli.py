"""Helpers shared by the absl entry points in scripts/."""
import os
import sys


def fail(message):
    """One line on stderr and exit status 1. os._exit: a failed orbax read leaves coroutines behind that
    would print tracebacks while the interpreter shuts down."""
    print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
