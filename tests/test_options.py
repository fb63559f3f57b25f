"""Each estimator's options are defined once (diffvar.options: ElboOptions, OdeOptions, DequantizationOptions):
the config's eval keys and their checks, scripts/evaluate.py's flags and each estimate's label all follow from
that one definition."""

import dataclasses

import ml_collections
import pytest

from diffvar import config as config_lib, evaluate as ev, options
from diffvar.dequantization import DequantizationOptions
from diffvar.elbo import ElboOptions
from diffvar.errors import ConfigError, OptionError
from diffvar.ode import OdeOptions


@pytest.mark.parametrize("key, value", [("eval.draws", 0), ("eval.probes", 0), ("eval.stratified", 1)])
def test_bad_eval_draws_probes_and_stratified_name_the_key(key, value):
    c = config_lib.defaults()
    name = key.split(".")[1]
    c.eval = ml_collections.ConfigDict(dict(c.eval.to_dict(), **{name: value}))  # as a config.json may hold it
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_lib.validate(c)


def test_every_option_is_a_config_key_and_a_flag_with_its_help():
    """config.eval holds each field (ODE fields as ode_<name>) with the class's default, bar the eval config's
    stated overrides; scripts/evaluate.py's flags are the same names (--form aside: it selects forms)."""
    e = config_lib.defaults().eval
    flags = ev.estimator_flags()
    for cls, prefix, overrides in config_lib.ESTIMATORS:
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            assert e[key] == overrides.get(f.name, f.default), key
            assert key == "form" or f.metadata["help"] in flags[key][1], key
    assert (e.draws, e.stratified, e.ode_divergence, e.dequantization) == (4, True, "auto", "auto")
    assert e.t_eps == e.truncated_normal_t == config_lib.defaults().sampling.t_min == 1e-3  # as objective.t_eps


@pytest.mark.parametrize(
    "cls, values, match",
    [
        (ElboOptions, dict(form="sliced"), r"form='sliced' is not allowed; choose one of ism, dsm"),
        (ElboOptions, dict(t_eps=0.0), r"t_eps=0.0 must be a number > 0"),
        (
            OdeOptions,
            dict(step_size="adaptive"),
            r"step_size='adaptive' is not allowed; choose one of batch, per_example",
        ),
        (DequantizationOptions, dict(importance_samples=0), r"importance_samples=0 must be an integer >= 1"),
    ],
)
def test_bad_options_are_one_line_naming_the_field(cls, values, match):
    with pytest.raises(ValueError, match=match):
        cls(**values)


def test_flags_are_checked_by_the_same_definition():
    with pytest.raises(OptionError, match=r"--ode_rtol=0 must be a number > 0"):
        ev.check_options(ode_rtol=0)
    with pytest.raises(OptionError, match=r"--truncated_normal_t=-1 must be a number > 0"):
        ev.check_options(truncated_normal_t=-1)
    with pytest.raises(OptionError, match=r"--num_draws is not an evaluation option"):
        ev.check_options(num_draws=2)
    ev.check_options(draws=2, ode_step_size="per_example", dequantization="auto")


def test_config_keys_are_checked_by_the_same_definition():
    for key, value, match in [
        ("eval.ode_step_size", "adaptive", r"eval\.ode_step_size='adaptive'"),
        ("eval.t_eps", 2.0, r"eval\.t_eps=2.0 must be in \(0, sde\.T"),
        ("sampling.t_min", 0.0, r"sampling\.t_min=0.0 must be a number > 0"),
    ]:
        c = config_lib.defaults()
        section, name = key.split(".")
        c[section][name] = value
        with pytest.raises(ConfigError, match=match):
            config_lib.validate(c)
    assert options.from_section(ElboOptions, ml_collections.ConfigDict({"draws": 2}), draws=None).draws == 2
