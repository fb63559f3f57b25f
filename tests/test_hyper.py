"""diffvar.sweep.declarations: the semantics of sweep / product / zipit / chainit / fixed / named and the checks."""

import types

import ml_collections
import pytest

from diffvar.errors import ConfigError
from diffvar.sweep import declarations as h


def base():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.optim = ml_collections.ConfigDict({"lr": 1e-3, "name": "adam", "warmup_steps": 0})
    c.model = ml_collections.ConfigDict({"ch_mult": (1, 2), "dropout": 0.0})
    c.data = ml_collections.ConfigDict({"random_flip": False, "extra": None})
    return c


def test_sweep_and_fixed():
    assert h.sweep("config.seed", [0, 1]) == [{"seed": 0}, {"seed": 1}]
    assert h.sweep("optim.lr", (1e-3,)) == [{"optim.lr": 1e-3}]
    assert h.sweep("seed", range(2)) == [{"seed": 0}, {"seed": 1}]
    assert h.fixed("config.model.ch_mult", (1, 2, 2)) == [{"model.ch_mult": (1, 2, 2)}]
    with pytest.raises(ConfigError, match=r"sweep\('seed', \[\]\) has no values"):
        h.sweep("seed", [])
    with pytest.raises(ConfigError, match="takes a list of values"):
        h.sweep("optim.name", "adam")  # a string is not a list of values
    with pytest.raises(ConfigError, match="takes a list of values"):
        h.sweep("seed", 3)
    for bad in ("", "config.", "optim..lr", "optim.l-r", 3):
        with pytest.raises(ConfigError, match="key"):
            h.sweep(bad, [1])


def test_config_prefix_stripped_once():
    assert h.sweep("config.config.x", [1]) == [{"config.x": 1}]  # only the leading one


def test_product():
    assert h.product([]) == [{}]  # one trial: the base config
    assert h.product([h.sweep("a", [1, 2]), h.sweep("b", ["x", "y"])]) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]  # first outermost
    assert list(h.product([h.sweep("b", [1]), h.sweep("a", [2])])[0]) == ["b", "a"]  # key order kept
    assert h.product([h.sweep("a", [1]), []]) == []
    with pytest.raises(ConfigError, match="key 'a' is set twice"):
        h.product([h.sweep("a", [1, 2]), h.fixed("config.a", 3)])
    with pytest.raises(ConfigError, match="one list of sweeps"):
        h.product(h.sweep("a", [1]), h.sweep("b", [2]))
    with pytest.raises(ConfigError, match="takes sweeps"):
        h.product([{"a": 1}])  # a trial, not a sweep


def test_zipit():
    assert h.zipit([]) == [{}]
    assert h.zipit([h.sweep("a", [1, 2]), h.sweep("b", [3, 4])]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    assert h.zipit([h.sweep("a", [1, 2, 3]), h.fixed("b", 0)]) == [
        {"a": 1, "b": 0},
        {"a": 2, "b": 0},
        {"a": 3, "b": 0},
    ]  # length-1 repeats
    assert h.zipit([h.fixed("a", 1), h.fixed("b", 2)]) == [{"a": 1, "b": 2}]
    with pytest.raises(ConfigError, match=r"unequal lengths \[2, 3\]"):
        h.zipit([h.sweep("a", [1, 2]), h.sweep("b", [1, 2, 3])])
    with pytest.raises(ConfigError, match="set twice"):
        h.zipit([h.sweep("a", [1, 2]), h.sweep("a", [3, 4])])
    with pytest.raises(ConfigError, match="unequal"):
        h.zipit([h.sweep("a", [1, 2]), []])


def test_chainit_and_nesting():
    assert h.chainit([]) == []
    assert h.chainit([h.sweep("a", [1]), h.product([h.sweep("b", [2, 3])])]) == [{"a": 1}, {"b": 2}, {"b": 3}]
    nested = h.product([h.chainit([h.sweep("a", [1, 2]), h.fixed("b", 0)]), h.sweep("seed", [0, 1])])
    assert nested == [
        {"a": 1, "seed": 0},
        {"a": 1, "seed": 1},
        {"a": 2, "seed": 0},
        {"a": 2, "seed": 1},
        {"b": 0, "seed": 0},
        {"b": 0, "seed": 1},
    ]
    trials = h.product([h.sweep("a", [1])])
    trials[0]["a"] = 9  # trials are fresh dicts: mutating one leaves the inputs alone
    src = h.sweep("a", [1])
    out = h.chainit([src])
    out[0]["a"] = 5
    assert src == [{"a": 1}]


def test_named():
    sweeps = {None: h.sweep("seed", [0]), "lr": h.sweep("optim.lr", [1e-3])}
    assert h.named(None, sweeps) == [{"seed": 0}]
    assert h.named("lr", sweeps) == [{"optim.lr": 1e-3}]
    with pytest.raises(ConfigError, match=r"unknown sweep 'x'; this config declares: \(default, no --sweep\), 'lr'"):
        h.named("x", sweeps)


def test_check_types():
    c = base()
    ok = [
        {"seed": 3},
        {"optim.lr": 1},
        {"optim.lr": 2.5e-4},
        {"model.ch_mult": (1, 2, 2)},
        {"data.random_flip": True},
        {"data.extra": "anything"},
        {"optim.name": "adamw"},
    ]
    assert h.check(c, ok) == ok  # ints are accepted for floats
    bad = [
        ({"seed": 1.5}, r"seed=1.5 \(float\) has the wrong type: seed takes an int"),
        ({"seed": True}, "seed takes an int"),
        ({"optim.lr": "1e-3"}, "optim.lr takes a number"),
        ({"optim.lr": False}, "optim.lr takes a number"),
        ({"model.ch_mult": [1, 2]}, r"model.ch_mult takes a tuple such as \(1, 2\)"),
        ({"data.random_flip": 1}, "data.random_flip takes a bool"),
        ({"optim.name": 3}, "optim.name takes a string"),
    ]
    for trial, message in bad:
        with pytest.raises(ConfigError, match=message):
            h.check(c, [{"seed": 0}, trial])


def test_check_keys():
    c = base()
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*did you mean optim.lr\?"):
        h.check(c, [{"optim.lrr": 1e-3}])
    with pytest.raises(ConfigError, match=r"unknown config key 'modl.dropout'.*Keys of the config: data, model"):
        h.check(c, [{"modl.dropout": 0.1}])
    with pytest.raises(ConfigError, match=r"'optim' is a group, not a value; sweep one of its keys: optim.lr"):
        h.check(c, [{"optim": 1}])
    with pytest.raises(ConfigError, match="seed is a value, not a group"):
        h.check(c, [{"seed.x": 1}])
    with pytest.raises(ConfigError, match="has no trials"):
        h.check(c, [])
    with pytest.raises(ConfigError, match=r"listed twice \(trials 0 and 2\)"):
        h.check(c, h.chainit([h.sweep("seed", [0, 1]), h.fixed("seed", 0)]))
    assert h.check(c, h.product([])) == [{}]


def test_load():
    c = base()
    mod = types.SimpleNamespace(
        get_hyper=lambda hh, name=None: hh.named(
            name, {None: hh.product([hh.sweep("config.seed", [0, 1])]), "lr": hh.sweep("config.optim.lr", [1e-3, 1e-2])}
        )
    )
    assert h.load(mod, c) == [{"seed": 0}, {"seed": 1}]
    assert h.load(mod, c, "lr") == [{"optim.lr": 1e-3}, {"optim.lr": 1e-2}]
    with pytest.raises(ConfigError, match="^cfg.py: unknown sweep 'nope'"):
        h.load(mod, c, "nope", source="cfg.py")
    with pytest.raises(ConfigError, match="cfg.py declares no sweep: add `def get_hyper"):
        h.load(types.SimpleNamespace(), c, source="cfg.py")
    unnamed = types.SimpleNamespace(get_hyper=lambda hh: hh.sweep("seed", [0]))
    assert h.load(unnamed, c) == [{"seed": 0}]
    with pytest.raises(ConfigError, match="declares no named sweeps, so --sweep=lr is not allowed"):
        h.load(unnamed, c, "lr")
    buggy = types.SimpleNamespace(get_hyper=lambda hh, name=None: 1 / 0)
    with pytest.raises(ConfigError, match="raised ZeroDivisionError"):
        h.load(buggy, c)
    with pytest.raises(ConfigError, match="returned None"):
        h.load(types.SimpleNamespace(get_hyper=lambda hh, name=None: None), c)
    with pytest.raises(ConfigError, match="cfg.py: unknown config key 'optim.beta'"):
        h.load(types.SimpleNamespace(get_hyper=lambda hh: hh.sweep("optim.beta", [1.0])), c, source="cfg.py")


def test_trial_names_and_cli_values():
    assert h.cli_value(True) == "true" and h.cli_value(1e-3) == "0.001" and h.cli_value((1, 2)) == "(1, 2)"
    assert h.cli_value("dsm_is") == "dsm_is" and h.cli_value(3) == "3" and h.cli_value(None) == "None"
    assert h.trial_name({}) == "base"
    assert h.trial_name({"objective.name": "dsm_is", "seed": 0}) == "objective.name=dsm_is,seed=0"
    assert h.trial_name({"optim.lr": 3e-4}) == "optim.lr=0.0003"
    odd = [
        {"model.ch_mult": (1, 2)},
        {"model.ch_mult": (1, 2, 2)},
        {"data.name": "a/b"},
        {"data.name": "a b"},
        {"data.name": "a,seed=1"},
        {"data.name": "a", "seed": 1},
        {"data.name": "x" * 300},
    ]
    names = [h.trial_name(t) for t in odd]
    assert len(set(names)) == len(names)
    for name in names:
        assert len(name) <= 120 and "/" not in name and " " not in name and not name.startswith(".")
    assert names[0].startswith("model.ch_mult=1-2-")  # readable, with a hash of the exact value


def test_shipped_configs_declare_valid_sweeps():
    from configs import digits, gmm2d

    for mod, names in ((gmm2d, (None, "lr")), (digits, (None, "lr"))):
        for name in names:
            trials = h.load(mod, mod.get_config(), name)
            assert len(trials) >= 2
    assert len(h.load(gmm2d, gmm2d.get_config())) == 4
    assert len(h.load(digits, digits.get_config())) == 8
