"""The experiment config: documented defaults, one validate(), and a workdir's saved config.

Every configs/<name>.py starts from defaults() and overrides a few values; every value is documented where
it is defined, below. Override any of them on the command line:
    python scripts/train.py --config=configs/digits.py --workdir=runs/x --config.optim.lr=1e-3

validate(config) checks every key before anything is compiled or written and raises ConfigError naming the
key, the value and what is allowed. from_workdir(workdir) reads the config a run saved, with keys added to
the defaults since then filled in (their defaults keep the old behaviour).
"""

from __future__ import annotations

import json
import os

import ml_collections

from diffvar import options
from diffvar.data import DATASETS, SPLITS
from diffvar.dequantization import TRAINING_DEQUANTIZATIONS, TRANSFORMS, DequantizationOptions
from diffvar.divergence import PROBES
from diffvar.elbo import ElboOptions
from diffvar.errors import ConfigError, WorkdirError, check_choice, check_number
from diffvar.models import DTYPES, MODELS
from diffvar.models.mlp import ACTIVATIONS, TIME_EMBEDDINGS
from diffvar.models.param import PARAMETERISATIONS
from diffvar.objectives import OBJECTIVES
from diffvar.ode import OdeOptions
from diffvar.schedule import SCHEDULES, check_objective


def defaults():
    """The documented defaults shared by every experiment (a fresh ConfigDict)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds init, data order, noise; a run is a pure function of config + seed

    c.data = d = ml_collections.ConfigDict()
    d.name = "digits"  # digits | mnist | fashion_mnist | cifar10 | imagenet32 | imagenet64 |
    # gmm2d | swissroll | moons | checkerboard
    d.data_dir = ""  # TFDS data_dir; "" = $DIFFVAR_DATA_DIR or ~/tensorflow_datasets
    d.random_flip = False  # random horizontal flips of training images
    d.transform = "logit"  # images: logit (y = logit(a + (1-2a) z)) | scale (y = 2z - 1)
    d.logit_alpha = 0.05  # a in the logit transform (sdeflow-light: 0.05)
    d.dequantization = "uniform"  # images, training data: uniform (z = (x + u) / L) | none (the bin centres
    # (x + 1/2) / L, i-DODE's: matched by the truncated normal at objective.t_eps)

    c.sde = s = ml_collections.ConfigDict()
    s.name = "vp"  # vp | subvp | ve | learned_vp (VDM's learned schedule, initialised at vp:
    # the network sees gamma(s); the interior minimises the loss's variance;
    # objectives dsm_is, dsm_lw, elbo; truncations at fixed gamma)
    s.beta_min = 0.1  # vp/subvp: beta(0); learned_vp: its initial (and reference) linear VP
    s.beta_max = 20.0  # vp/subvp: beta(T); learned_vp: likewise
    s.learn_end = False  # learned_vp: learn B(T) by the ELBO's gradient (objective elbo); else
    # keep the linear VP's B(T) = (beta_min + beta_max) T / 2
    s.schedule_features = 128  # learned_vp: sigmoid units of the monotone network (models/noise_schedule.py)
    s.schedule_lr_scale = 1.0  # learned_vp: the schedule's Adam runs at this times optim's learning rate
    s.schedule_grad_clip = 0.0  # learned_vp: global-norm clipping of the schedule's gradients; 0 = none
    s.sigma_min = 0.01  # ve: S(0)
    s.sigma_max = 50.0  # ve: S(T), also the prior's std
    s.T = 1.0  # time horizon

    c.model = m = ml_collections.ConfigDict()
    m.name = "unet"  # unet | mlp
    m.parameterization = "drift"  # network outputs: drift (a = g * score, the paper) | score | eps;
    # learned_vp: g, sigma those of sde.beta_* at the same gamma
    m.ch = 32  # unet: base channels
    m.ch_mult = (1, 2)  # unet: channel multiplier per resolution
    m.num_res_blocks = 2  # unet: residual blocks per resolution
    m.attn_resolutions = (4,)  # unet: resolutions with self-attention
    m.dropout = 0.0  # unet: dropout rate inside residual blocks
    m.hidden = 128  # mlp: width
    m.depth = 3  # mlp: hidden layers
    m.activation = "softplus"  # mlp: softplus | silu | relu | tanh
    m.time_embedding = "concat"  # mlp: concat (raw t) | sinusoidal
    m.time_scale = 1000.0  # t is embedded as t * time_scale
    m.dtype = "float32"  # float32 | bfloat16: the network's matmuls, convolutions and activations
    # (parameters, optimizer state, the network's output, the SDE and the
    # ELBO's sums stay float32; models/unet.py says where each cast happens)

    c.objective = o = ml_collections.ConfigDict()
    o.name = "dsm_is"  # dsm (eps-loss) | dsm_is (ELBO, importance time) | dsm_lw | elbo | ssm
    o.t_eps = 1e-3  # training times are drawn from [t_eps, T] (elbo: [0, T]); learned_vp:
    # from the time of the linear VP's gamma(t_eps) (sde.truncation_time)
    o.probe = "rademacher"  # Hutchinson probe for elbo / ssm: rademacher | gaussian

    c.optim = p = ml_collections.ConfigDict()
    p.name = "adam"  # adam | adamw
    p.lr = 2e-4  # peak learning rate
    p.b1 = 0.9
    p.b2 = 0.999
    p.eps = 1e-8
    p.weight_decay = 0.0  # adamw only
    p.warmup_steps = 0  # linear warm-up from 0 to lr
    p.schedule = "constant"  # constant | cosine (decay to 0 at training.num_steps)
    p.grad_clip = 1.0  # global-norm clipping; 0 disables

    c.training = t = ml_collections.ConfigDict()
    t.batch_size = 64  # global batch, split over all devices of all processes
    t.num_steps = 10000  # optimizer steps
    t.max_minutes = 0.0  # stop (and checkpoint) after this wall time; 0 = no limit
    t.steps_per_call = 1  # optimizer steps per compiled call (lax.scan); >1 amortizes dispatch on
    # accelerators. Keep 1 for U-Nets on CPU: XLA:CPU runs convolution
    # gradients inside loops ~10x slower (measured, jax 0.10.2)
    t.ema_decay = 0.999  # EMA of parameters, debiased, used for eval and samples; 0 disables
    t.log_every = 100  # steps between metrics.jsonl lines / progress lines
    t.ckpt_every = 1000  # steps between checkpoints (also at the end and on SIGTERM)
    t.keep = 3  # latest checkpoints kept (the best by test metric is kept too)

    c.eval = e = ml_collections.ConfigDict()
    e.every = 1000  # steps between evaluations (also at the end); 0 = only at the end
    e.split = "test"  # split evaluated
    e.batch_size = 256  # examples per evaluation batch (global)
    e.repeats = 1  # passes: independent ELBO units per example; more = smaller s.e.
    e.final_repeats = 0  # passes at the last evaluation; 0 = eval.repeats
    e.max_examples = 0  # evaluate only the first N examples while training; 0 = all
    # The estimators' options, each defined once (its default, help and allowed values) by a dataclass:
    # eval.<name> for elbo.ElboOptions (eval.form is the trainer's; draws = 4 stratified: 2.1x the s.e. per
    # second of draws = 1 on digits, docs/performance.md, "The ELBO's noise"), eval.ode_<name> for
    # ode.OdeOptions (scripts/evaluate.py's ODE) and eval.<name> for dequantization.DequantizationOptions.
    e.update(estimator_defaults())

    c.sampling = sm = ml_collections.ConfigDict()
    sm.every = 0  # steps between sample grids; 0 = only at the end
    sm.num = 64  # samples per grid
    sm.steps = 500  # Euler-Maruyama steps
    sm.lam = 0.0  # 0 = reverse SDE ... 1 = probability-flow ODE
    sm.t_min = 1e-3  # the samplers' stop time, a reference time (sde.truncation_time): they
    # sample the model's marginal there, where the score of data is finite
    return c


# ----------------------------------------------------------------------------------------------
# The estimators' options in config.eval: (options class, key prefix, the eval config's defaults where they
# differ from the class's).

ESTIMATORS = (
    (ElboOptions, "", dict(draws=4, stratified=True)),
    (OdeOptions, "ode_", dict(divergence="auto")),
    (DequantizationOptions, "", dict(dequantization="auto")),
)


def estimator_defaults():
    """{key: default} of the estimators' options in config.eval (ESTIMATORS)."""
    out = {}
    for cls, prefix, overrides in ESTIMATORS:
        out.update(options.defaults(cls, prefix, **overrides))
    return out


# ----------------------------------------------------------------------------------------------
# validate(): every key, before anything is compiled or written.

CHOICES = {
    "data.name": DATASETS,
    "data.transform": TRANSFORMS,
    "sde.name": SCHEDULES,
    "model.name": MODELS,
    "model.parameterization": PARAMETERISATIONS,
    "model.activation": tuple(ACTIVATIONS),
    "model.time_embedding": TIME_EMBEDDINGS,
    "model.dtype": DTYPES,
    "objective.name": OBJECTIVES,
    "objective.probe": PROBES,
    "optim.name": ("adam", "adamw"),
    "optim.schedule": ("constant", "cosine"),
    "eval.split": SPLITS,
    "data.dequantization": TRAINING_DEQUANTIZATIONS,
}
# key -> keyword arguments of check_number
NUMBERS = {
    "seed": dict(minimum=0, integer=True),
    "data.logit_alpha": dict(minimum=0, maximum=0.4999, strict=True),
    "sde.beta_min": dict(minimum=0, strict=True),
    "sde.beta_max": dict(minimum=0, strict=True),
    "sde.sigma_min": dict(minimum=0, strict=True),
    "sde.sigma_max": dict(minimum=0, strict=True),
    "sde.T": dict(minimum=0, strict=True),
    "sde.schedule_features": dict(minimum=1, integer=True),
    "sde.schedule_lr_scale": dict(minimum=0, strict=True),
    "sde.schedule_grad_clip": dict(minimum=0),
    "model.ch": dict(minimum=2, integer=True),
    "model.num_res_blocks": dict(minimum=1, integer=True),
    "model.dropout": dict(minimum=0, maximum=0.999),
    "model.hidden": dict(minimum=1, integer=True),
    "model.depth": dict(minimum=1, integer=True),
    "model.time_scale": dict(minimum=0, strict=True),
    "objective.t_eps": dict(minimum=0, strict=True),
    "optim.lr": dict(minimum=0, strict=True),
    "optim.b1": dict(minimum=0, maximum=0.999999),
    "optim.b2": dict(minimum=0, maximum=0.999999),
    "optim.eps": dict(minimum=0),
    "optim.weight_decay": dict(minimum=0),
    "optim.warmup_steps": dict(minimum=0, integer=True),
    "optim.grad_clip": dict(minimum=0),
    "training.batch_size": dict(minimum=1, integer=True),
    "training.num_steps": dict(minimum=1, integer=True),
    "training.max_minutes": dict(minimum=0),
    "training.steps_per_call": dict(minimum=1, integer=True),
    "training.ema_decay": dict(minimum=0, maximum=0.999999),
    "training.log_every": dict(minimum=1, integer=True),
    "training.ckpt_every": dict(minimum=1, integer=True),
    "training.keep": dict(minimum=1, integer=True),
    "eval.every": dict(minimum=0, integer=True),
    "eval.batch_size": dict(minimum=1, integer=True),
    "eval.repeats": dict(minimum=1, integer=True),
    "eval.final_repeats": dict(minimum=0, integer=True),
    "eval.max_examples": dict(minimum=0, integer=True),
    "sampling.every": dict(minimum=0, integer=True),
    "sampling.num": dict(minimum=1, integer=True),
    "sampling.steps": dict(minimum=1, integer=True),
    "sampling.lam": dict(minimum=0, maximum=1),
    "sampling.t_min": dict(minimum=0, strict=True),
}
SEQUENCES = ("model.ch_mult", "model.attn_resolutions")


def get(config, key):
    """config["a.b"] for a dotted key."""
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def validate(config, num_devices=1):
    """Checks every value the engine relies on; raises ConfigError naming the key and what is allowed."""
    for key, allowed in CHOICES.items():
        check_choice(key, get(config, key), allowed)
    for key, kw in NUMBERS.items():
        check_number(key, get(config, key), **kw)
    for cls, prefix, _ in ESTIMATORS:
        options.check(cls, options.section_values(cls, config.eval, prefix), "eval." + prefix, ConfigError)
    for key in SEQUENCES:
        value = get(config, key)
        ok = isinstance(value, (tuple, list)) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
        )
        if not ok or (key == "model.ch_mult" and not value):
            raise ConfigError(
                f"{key}={value!r} must be a {'non-empty ' if key == 'model.ch_mult' else ''}sequence of integers >= 1"
            )
    s, t, o = config.sde, config.training, config.objective
    if s.name == "ve" and s.sigma_min >= s.sigma_max:
        raise ConfigError(f"sde.sigma_min={s.sigma_min!r} must be < sde.sigma_max={s.sigma_max!r}")
    if s.name != "ve" and s.beta_min >= s.beta_max:
        raise ConfigError(f"sde.beta_min={s.beta_min!r} must be < sde.beta_max={s.beta_max!r}")
    try:
        check_objective(s.name, o.name, s.learn_end)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for key in ("objective.t_eps", "eval.t_eps", "eval.truncated_normal_t", "sampling.t_min"):
        if get(config, key) >= s.T:
            raise ConfigError(f"{key}={get(config, key)!r} must be in (0, sde.T={s.T!r})")
    if config.optim.schedule == "cosine" and config.optim.warmup_steps >= t.num_steps:
        raise ConfigError(
            f"optim.warmup_steps={config.optim.warmup_steps} must be < training.num_steps="
            f"{t.num_steps} with optim.schedule='cosine'"
        )
    for key in ("training.batch_size", "eval.batch_size"):
        if get(config, key) % num_devices:
            raise ConfigError(
                f"{key}={get(config, key)} must be divisible by the number of devices ({num_devices}; "
                f"on CPU the environment variable JAX_NUM_CPU_DEVICES sets it)"
            )
    k = t.steps_per_call
    for key in ("training.num_steps", "training.log_every", "training.ckpt_every", "eval.every", "sampling.every"):
        if get(config, key) % k:
            raise ConfigError(f"{key}={get(config, key)} must be a multiple of training.steps_per_call={k}")


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


def identity_changes(saved, config):
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


def to_json(config):
    """The resolved config as a JSON-ready dict (what a run saves as workdir/config.json)."""
    return json.loads(config.to_json_best_effort())


def from_workdir(workdir):
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


def load_module(path):
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


def load_file(path):
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


def check_key(config, key, where):
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
