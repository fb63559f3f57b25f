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


class NonFiniteLossError(DiffvarError, RuntimeError):
    """Training produced a non-finite loss; no checkpoint of that state is written."""

    kind = "non_finite"


class SolverError(DiffvarError, RuntimeError):
    """An adaptive solver that needed more steps than allowed at the requested tolerance."""

    kind = "solver"
