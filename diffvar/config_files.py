"""Configs in files: configs/<name>.py (get_config()), and the config.json a training workdir saved.

    config = load_file("configs/digits.py")          # get_config() of that file, validated keys and all
    config, filled = from_workdir("runs/digits")     # the run's config; keys added since then, filled in
    changes = identity_changes(saved, config)        # the keys whose change a resume refuses

from_workdir fills keys added to the defaults since the run was started with their defaults (which keep the
old behaviour).
"""

from __future__ import annotations

import json
import os

import ml_collections

from diffvar.config import SEQUENCES, defaults
from diffvar.errors import ConfigError, WorkdirError

# ----------------------------------------------------------------------------------------------
# A workdir's config.


# What a checkpoint's meaning depends on: resuming a workdir with other values of these is refused. (The
# schedule, evaluation, sampling, logging and training length may change between runs of a workdir.)
IDENTITY = (
    "seed",
    "data.name",
    "data.transform",
    "data.logit_alpha",
    "data.dequantization",
    "sde",
    "model",
    "training.batch_size",
)


def identity_changes(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> list:
    """["key: saved -> new", ...] for the IDENTITY keys (and the keys under them) that differ."""

    def flat(c, prefix=""):
        out = {}
        for k, v in c.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(saved), flat(config)
    keys = [k for k in sorted(set(a) | set(b)) if any(k == i or k.startswith(i + ".") for i in IDENTITY)]
    norm = lambda v: list(v) if isinstance(v, (tuple, list)) else v
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if norm(a.get(k)) != norm(b.get(k))]


def to_json(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as a JSON-ready dict (what a run saves as workdir/config.json)."""
    return json.loads(config.to_json_best_effort())


def from_workdir(workdir: str) -> tuple[ml_collections.ConfigDict, list]:
    """(config, keys filled with defaults) from workdir/config.json; WorkdirError when missing or unreadable.

    A run's config.json holds the keys of the code that trained it; a key introduced later takes its current
    default (which, for a new feature, means the old behaviour). Saved-only keys are kept.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise WorkdirError(f"workdir {workdir!r} does not exist")
    if not os.path.exists(path):
        raise WorkdirError(f"no config.json in workdir {workdir!r}: is it a diffvar training workdir?")
    try:
        with open(path) as f:
            saved = ml_collections.ConfigDict(json.load(f))
    except ValueError as e:
        raise WorkdirError(f"{path} is not valid JSON: {e}") from None
    merged, filled = defaults(), []

    def walk(base, old, prefix):
        for key in base:
            if key not in old:
                filled.append(prefix + key)
            elif isinstance(base[key], ml_collections.ConfigDict) and isinstance(old[key], ml_collections.ConfigDict):
                walk(base[key], old[key], prefix + key + ".")

    walk(merged, saved, "")
    merged.update(saved)  # recursive: every saved value wins
    for key in SEQUENCES:  # JSON turns tuples into lists
        section, name = key.split(".")
        merged[section][name] = tuple(merged[section][name])
    return merged, filled


# ----------------------------------------------------------------------------------------------
# A config file and --config.* overrides, checked before absl's config_flags loads them (so that a broken
# file or a misspelt key is one clear line, not a traceback from inside the flag parser).


def load_module(path: str) -> object:
    """The globals of the config file at `path` (get_config, and get_hyper where a sweep is declared);
    ConfigError (one line) when the file is missing or does not import."""
    import runpy

    path = path.split(":")[0]  # config_flags' "file.py:arg" form passes arg to get_config
    if not os.path.isfile(path):
        raise ConfigError(f"--config={path}: no such file")
    try:
        return runpy.run_path(path)
    except SyntaxError as e:
        raise ConfigError(f"--config={path}: syntax error at line {e.lineno}: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 - whatever the file raises while importing
        raise ConfigError(f"--config={path} does not import: {type(e).__name__}: {e}") from None


def load_file(path: str) -> ml_collections.ConfigDict:
    """get_config() of the config file at `path`; ConfigError (one line) when the file is missing, does not
    import, has no get_config, or returns something other than a ConfigDict."""
    path = path.split(":")[0]
    module = load_module(path)
    if not callable(module.get("get_config")):
        raise ConfigError(
            f"--config={path} defines no get_config() (a config file is a get_config() returning "
            f"an ml_collections.ConfigDict, e.g. built on diffvar.config.defaults())"
        )
    try:
        config = module["get_config"]()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"--config={path}: get_config() raised {type(e).__name__}: {e}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"--config={path}: get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict"
        )
    return config


def check_key(config: ml_collections.ConfigDict, key: str, where: str) -> None:
    """Raises ConfigError unless the dotted `key` exists in config (suggesting the closest key)."""
    import difflib

    node, done = config, []
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            keys = [".".join(done + [k]) for k in node] if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(".".join(done + [part]), keys, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{where}: {key} is not a config key{hint}")
        node, done = node[part], done + [part]
