"""Sweep declarations: sweep / product / zipit / chainit / fixed / named, and their checks against a config.

A config file declares its sweeps next to get_config(), XManager-style; `h` is this module
(diffvar.sweep.declarations):

    def get_hyper(h, name=None):
        return h.named(name, {
            None: h.product([h.sweep("config.objective.name", ["dsm_is", "dsm_lw"]),
                             h.sweep("config.seed", [0, 1])]),
            "lr": h.sweep("optim.lr", [1e-3, 3e-3]),
        })

A sweep is a list of trials; a trial is a dict (insertion-ordered) config key -> value, the overrides of
that trial. The rules, each tested:
- keys are dotted config paths; a leading "config." is stripped;
- sweep(key, values) has one trial per value; no values (or a string / mapping instead of a list) is an error;
- fixed(key, value) is one trial;
- product([a, b, ...]) is every combination, the first sweep outermost; product([]) is one trial with no
  overrides (the base config);
- zipit([a, b, ...]) pairs the i-th trials; lengths must be equal, except that length-1 sweeps repeat;
  zipit([]) is one trial with no overrides;
- chainit([a, b, ...]) is a then b ...; chainit([]) is no trial;
- a key set twice in one trial (by product or zipit) is an error;
- check(config, trials) rejects, before anything runs, an empty sweep, a trial listed twice, an unknown key,
  a key naming a group, and a value of the wrong type (ints are accepted for floats; tuples only for tuples).
Every error is a ConfigError naming the key, the value and what is allowed. load(module, config, name) runs
a config module's get_hyper and checks the result; cli_value / trial_name give a trial's command-line form
and its directory name; apply(config, trial) is the trial's full config.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import re
import sys
from collections.abc import Mapping

import ml_collections

from diffvar.errors import ConfigError


def normalize_key(key):
    """A normalised config key: a non-empty dotted path of identifiers, without a leading 'config.'."""
    if not isinstance(key, str):
        raise ConfigError(f"a sweep key must be a string such as 'optim.lr', got {key!r}")
    if key.startswith("config."):
        key = key[len("config.") :]
    if not key or not all(part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"sweep key {key!r} is not a dotted config path such as 'optim.lr'")
    return key


def _check_sweep(what, sweep):
    """A sweep argument must be a list of trials (dicts)."""
    if not isinstance(sweep, (list, tuple)) or not all(isinstance(t, Mapping) for t in sweep):
        raise ConfigError(f"{what} takes sweeps (lists of trials made by h.sweep, h.product, ...), got {sweep!r}")
    return sweep


def _sweeps(what, sweeps, extra):
    if extra or not isinstance(sweeps, (list, tuple)):
        raise ConfigError(f"{what} takes one list of sweeps: h.{what}([h.sweep(...), h.sweep(...)])")
    return [_check_sweep(what, s) for s in sweeps]


def _merge(what, trials):
    """One trial from several: a key set twice is an error."""
    merged = {}
    for trial in trials:
        for key, value in trial.items():
            if key in merged:
                raise ConfigError(
                    f"{what}: key {key!r} is set twice in one trial ({merged[key]!r} and {value!r}); "
                    "each key may come from one sweep only"
                )
            merged[key] = value
    return merged


def sweep(key, values):
    """One trial per value: [{key: v} for v in values]. values: a non-empty list, tuple or range."""
    key = normalize_key(key)
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"sweep({key!r}, ...) takes a list of values, got {values!r}")
    values = list(values)
    if not values:
        raise ConfigError(f"sweep({key!r}, []) has no values; an empty sweep runs nothing")
    return [{key: v} for v in values]


def fixed(key, value):
    """One trial setting key to value (a tuple value is one value)."""
    return [{normalize_key(key): value}]


def product(sweeps, *extra):
    """Every combination of the sweeps' trials, the first sweep outermost; product([]) = [{}]."""
    sweeps = _sweeps("product", sweeps, extra)
    return [_merge("product", combo) for combo in itertools.product(*sweeps)]


def zipit(sweeps, *extra):
    """The i-th trials of all sweeps together; equal lengths, except that length-1 sweeps repeat."""
    sweeps = _sweeps("zipit", sweeps, extra)
    lengths = sorted({len(s) for s in sweeps} - {1})
    if len(lengths) > 1:
        raise ConfigError(
            f"zipit of sweeps of unequal lengths {[len(s) for s in sweeps]}; "
            "lengths must be equal (a length-1 sweep repeats)"
        )
    n = lengths[0] if lengths else (1 if all(len(s) == 1 for s in sweeps) else 0)
    return [_merge("zipit", [s[0] if len(s) == 1 else s[i] for s in sweeps]) for i in range(n)]


def chainit(sweeps, *extra):
    """The sweeps' trials one after another; chainit([]) = []."""
    sweeps = _sweeps("chainit", sweeps, extra)
    return [dict(t) for s in sweeps for t in s]


def named(name, sweeps):
    """The sweep called `name` from a dict {None: default sweep, "name": sweep, ...}; an unknown name is an
    error listing the known ones."""
    if not isinstance(sweeps, Mapping):
        raise ConfigError(f"named(name, sweeps) takes a dict of sweeps by name, got {sweeps!r}")
    if name not in sweeps:
        known = ", ".join("(default, no --sweep)" if n is None else repr(n) for n in sweeps)
        raise ConfigError(f"unknown sweep {name!r}; this config declares: {known}")
    return _check_sweep("named", sweeps[name])


# ----------------------------------------------------------------------------------------------
# A trial's command-line form and directory name.


def cli_value(value):
    """A value as the trainer's --config.key=<text> flag parses it back (bools true/false, tuples as repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, (int, float, tuple)):
        return repr(value)
    return str(value)


def trial_name(overrides):
    """A readable, filesystem-safe, unique directory name: "objective.name=dsm_is,seed=0"; values that lose
    characters to the cleaning (or names over 100 characters) get a hash of the exact overrides appended."""
    if not overrides:
        return "base"
    exact = ",".join(f"{k}={cli_value(v)}" for k, v in overrides.items())
    shown = ",".join(
        f"{k}={re.sub(r'[^A-Za-z0-9._+-]+', '-', cli_value(v)).strip('-') or '_'}" for k, v in overrides.items()
    )
    if shown == exact and len(shown) <= 100:
        return shown
    return f"{shown[:100]}-{hashlib.sha1(exact.encode()).hexdigest()[:8]}"


# ----------------------------------------------------------------------------------------------
# Checks against the base config.


def _allowed(default):
    """(type check, description) for a value replacing `default`."""
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "a bool"
    if isinstance(default, int):
        return (lambda v: isinstance(v, int) and not isinstance(v, bool)), "an int"
    if isinstance(default, float):
        return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)), "a number (int or float)"
    if isinstance(default, str):
        return (lambda v: isinstance(v, str)), "a string"
    if isinstance(default, tuple):
        return (lambda v: isinstance(v, tuple)), f"a tuple such as {default!r}"
    if default is None:
        ok = (type(None), bool, int, float, str, tuple)
        return (lambda v: isinstance(v, ok)), "None, a bool, number, string or tuple"
    return (lambda v: isinstance(v, type(default))), f"a {type(default).__name__}"


def check_value(config, key, value):
    """Raises ConfigError unless `key` names a value of `config` (a ConfigDict) that `value` may replace."""
    node, path = config, []
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"unknown config key {key!r}: {'.'.join(path)} is a value, not a group")
        if part not in node:
            group = ".".join(path) or "the config"
            near = difflib.get_close_matches(part, list(node.keys()), n=3)
            hint = f"; did you mean {', '.join('.'.join(path + [n]) for n in near)}?" if near else "."
            raise ConfigError(
                f"unknown config key {key!r} (swept value {value!r}): {group} has no {part!r}{hint} "
                f"Keys of {group}: {', '.join(sorted(node.keys()))}"
            )
        node, path = node[part], path + [part]
    if isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(
            f"config key {key!r} is a group, not a value; sweep one of its keys: "
            f"{', '.join(key + '.' + k for k in sorted(node.keys()))}"
        )
    ok, allowed = _allowed(node)
    if not ok(value):
        raise ConfigError(
            f"{key}={value!r} ({type(value).__name__}) has the wrong type: {key} takes {allowed} (default {node!r})"
        )


def apply(config, overrides):
    """A copy of the ConfigDict with the overrides ({dotted key: value}) set."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def check(config, trials):
    """Validates a sweep against the base config before anything runs; returns the trials as a list of dicts.

    config: the base ConfigDict (with the command line's overrides). trials: a sweep (list of dicts)."""
    trials = _check_sweep("the sweep", trials)
    if not trials:
        raise ConfigError("the sweep has no trials (an empty sweep or chainit([])); nothing to run")
    seen = {}
    for i, trial in enumerate(trials):
        for key, value in trial.items():
            check_value(config, normalize_key(key), value)
        ident = repr(sorted((normalize_key(k), repr(v)) for k, v in trial.items()))
        if ident in seen:
            raise ConfigError(
                f"trial {dict(trial)!r} is listed twice (trials {seen[ident]} and {i}); each trial must differ"
            )
        seen[ident] = i
    return [{normalize_key(k): v for k, v in t.items()} for t in trials]


def load(module, config, name=None, source="the config"):
    """The checked sweep `name` (None: the default) declared by `module`'s get_hyper(h, name=None).

    module: the loaded config module; config: its base ConfigDict; source: the file, for messages."""
    get_hyper = getattr(module, "get_hyper", None)
    if get_hyper is None:
        raise ConfigError(
            f"{source} declares no sweep: add `def get_hyper(h, name=None)` returning "
            "e.g. h.product([h.sweep('config.seed', [0, 1])])"
        )
    try:
        trials = get_hyper(sys.modules[__name__]) if name is None else get_hyper(sys.modules[__name__], name=name)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except TypeError as e:
        if name is not None and "name" in str(e):
            raise ConfigError(
                f"{source}: get_hyper(h) declares no named sweeps, so --sweep={name} is not "
                "allowed; declare get_hyper(h, name=None)"
            ) from None
        raise ConfigError(f"{source}: get_hyper raised TypeError: {e}") from None
    except Exception as e:  # noqa: BLE001 - a bug in the user's get_hyper: one line, not a traceback
        raise ConfigError(f"{source}: get_hyper(h, name={name!r}) raised {type(e).__name__}: {e}") from None
    if trials is None:
        raise ConfigError(f"{source}: get_hyper(h, name={name!r}) returned None (unknown sweep name?)")
    try:
        return check(config, trials)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
