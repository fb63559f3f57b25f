"""Estimator options: each estimator's settings are one frozen dataclass whose fields carry their help line and
what they allow; everything else is derived from it (big_vision's evaluators take theirs from a config section).

    @dataclasses.dataclass(frozen=True)
    class ElboOptions(Options):
        draws: int = option(1, "ELBO draws averaged into one unit per example and pass", minimum=1, integer=True)

    ElboOptions(draws=0)                               # ValueError: draws=0 must be an integer >= 1
    config.eval.update(defaults(ElboOptions, draws=4))  # config keys and their defaults (diffvar/config.py)
    check(ElboOptions, {"draws": 0}, "--", OptionError)  # a flag's or a config key's check, one line
    from_section(ElboOptions, config.eval, draws=8)    # the options of a run, with overrides
    elbo(score_fn, sde, x, rng, **dataclasses.asdict(o))  # the call; asdict(o) is also the JSON label

Adding an option means adding one field (and using it where the estimator computes).
"""

from __future__ import annotations

import dataclasses

from diffvar.errors import check_choice, check_number


def option(default, help: str, choices: tuple | None = None, **number):
    """A dataclass field: its default, its help line, and either the allowed `choices` or check_number's
    keyword arguments (minimum, maximum, integer, strict); a bool default allows True or False."""
    return dataclasses.field(default=default, metadata=dict(help=help, choices=choices, number=number))


def check_value(field: dataclasses.Field, value, name: str, error=ValueError):
    """Raises `error` ("<name>=<value> ...", one line) unless value is allowed for `field`."""
    meta = field.metadata
    if meta["choices"] is not None:
        check_choice(name, value, meta["choices"], error=error)
    elif isinstance(field.default, bool):
        if not isinstance(value, bool):
            raise error(f"{name}={value!r} must be True or False")
    else:
        check_number(name, value, **meta["number"], error=error)


def check(cls, values: dict, prefix: str = "", error=ValueError):
    """Checks each of `values` ({field name: value}; None skipped: "take the config's") against cls's fields,
    naming it prefix + name (a config key "eval.draws" or a flag "--draws")."""
    for f in dataclasses.fields(cls):
        if values.get(f.name) is not None:
            check_value(f, values[f.name], prefix + f.name, error)


class Options:
    """Base of the estimator options: checks every field when built (one line naming the field)."""

    def __post_init__(self):
        check(type(self), dataclasses.asdict(self))


def defaults(cls, prefix: str = "", **overrides) -> dict:
    """{prefix + field name: default} (with overrides by field name): a config section's keys."""
    out = {f.name: f.default for f in dataclasses.fields(cls)}
    out.update(overrides)
    return {prefix + k: v for k, v in out.items()}


def help_lines(cls, prefix: str = "") -> dict:
    """{prefix + field name: help line}: a flag's help."""
    return {prefix + f.name: f.metadata["help"] for f in dataclasses.fields(cls)}


def section_values(cls, section, prefix: str = "") -> dict:
    """{field name: section[prefix + name]} of a config section (keys it lacks: the field's default)."""
    return {f.name: section.get(prefix + f.name, f.default) for f in dataclasses.fields(cls)}


def from_section(cls, section, prefix: str = "", **overrides):
    """cls from a config section's keys prefix + name, with overrides by field name (None: the section's)."""
    values = section_values(cls, section, prefix)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)
