"""Errors a user can fix. Programs turn any DiffvarError into one `error: ...` line and exit status 1.

This module imports nothing from diffvar, so every layer may raise these (the data pipeline, the config
checks, the runtime and the programs alike). The message says which key, flag or path is wrong, the value,
and what is allowed.
"""


class DiffvarError(Exception):
    """Base of every error a user can fix (bad config value, bad flag, missing data or checkpoint)."""

    kind = "error"  # a short machine-readable name, recorded in a run's status.json


class ConfigError(DiffvarError, ValueError):
    """A config value that cannot work; raised before anything is compiled or written."""

    kind = "config"


class OptionError(DiffvarError, ValueError):
    """A command-line option (of evaluate, sample, sweep) out of range or not allowed."""

    kind = "option"


class DataNotPreparedError(DiffvarError, ValueError):
    """A TFDS dataset that is not prepared in the data directory (nothing is downloaded at run time)."""

    kind = "data"


class WorkdirError(DiffvarError):
    """A workdir that is missing, is not a diffvar workdir, or is in use by another process."""

    kind = "workdir"


class CheckpointError(DiffvarError):
    """No checkpoint, a missing step, or a checkpoint that cannot be read or holds implausible values."""

    kind = "checkpoint"


class StorageError(DiffvarError, OSError):
    """A file that cannot be written (disk full, permissions): the previous checkpoint is left intact."""

    kind = "storage"


class NonFiniteLossError(DiffvarError, RuntimeError):
    """Training produced a non-finite loss; no checkpoint of that state is written."""

    kind = "non_finite"


class SolverError(DiffvarError, RuntimeError):
    """An adaptive solver that needed more steps than allowed at the requested tolerance."""

    kind = "solver"


# ----------------------------------------------------------------------------------------------
# The two checks every door uses: `name` is a config key ("optim.lr") or a flag ("--repeats").


def check_choice(name, value, allowed, error=ConfigError):
    """Raises `error` unless value is one of `allowed`: "<name>=<value> is not allowed; choose one of ..."."""
    if value not in allowed:
        raise error(f"{name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")
    return value


def check_number(name, value, minimum=None, maximum=None, integer=False, strict=False, error=ConfigError):
    """Raises `error` unless value is a finite number (an integer if asked) with minimum <= value <= maximum
    (minimum < value when strict). Booleans are not numbers."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value == value
        and abs(value) != float("inf")
    )
    ok = ok and (not integer or float(value).is_integer())
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        kind = "an integer" if integer else "a number"
        if minimum is not None and maximum is not None:
            bounds = f" in {'(' if strict else '['}{minimum:g}, {maximum:g}]"
        elif minimum is not None:
            bounds = f" {'>' if strict else '>='} {minimum:g}"
        else:
            bounds = f" <= {maximum:g}" if maximum is not None else ""
        raise error(f"{name}={value!r} must be {kind}{bounds}")
    return value
