"""The experiment config: documented defaults and one validate() (config_files.py reads and writes configs).

Every configs/<name>.py starts from defaults() and overrides a few values; every value is documented where
it is defined, below. Override any of them on the command line:
    python scripts/train.py --config=configs/digits.py --workdir=runs/x --config.optim.lr=1e-3

validate(config) checks every key before anything is compiled or written and raises ConfigError naming the
key, the value and what is allowed.
"""

from __future__ import annotations

import ml_collections

from diffvar import options
from diffvar.data import DATASETS, SPLITS
from diffvar.dequantization import TRAINING_DEQUANTIZATIONS, TRANSFORMS, DequantizationOptions
from diffvar.divergence import PROBES
from diffvar.elbo import ElboOptions
from diffvar.errors import ConfigError, check_choice, check_number
from diffvar.models import DTYPES, MODELS
from diffvar.models.mlp import ACTIVATIONS, TIME_EMBEDDINGS
from diffvar.models.param import PARAMETERISATIONS
from diffvar.objectives import OBJECTIVES
from diffvar.ode import OdeOptions
from diffvar.schedule import SCHEDULES, check_objective


def defaults() -> ml_collections.ConfigDict:
    """The documented defaults shared by every experiment (a fresh ConfigDict), one section at a time."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds init, data order, noise; a run is a pure function of config + seed
    c.data, c.sde, c.model, c.objective = _data(), _sde(), _model(), _objective()
    c.optim, c.training, c.eval, c.sampling = _optim(), _training(), _eval(), _sampling()
    return c


def _data():
    d = ml_collections.ConfigDict()
    # digits | mnist | fashion_mnist | cifar10 | imagenet32 | imagenet64 | gmm2d | swissroll | moons | checkerboard
    d.name = "digits"
    d.data_dir = ""  # TFDS data_dir; "" = $DIFFVAR_DATA_DIR or ~/tensorflow_datasets
    d.random_flip = False  # random horizontal flips of training images
    d.transform = "logit"  # images: logit (y = logit(a + (1-2a) z)) | scale (y = 2z - 1)
    d.logit_alpha = 0.05  # a in the logit transform (sdeflow-light: 0.05)
    # images, training data: uniform (z = (x + u) / L) | none (the bin centres (x + 1/2) / L, i-DODE's:
    # matched by the truncated normal at eval.truncated_normal_t)
    d.dequantization = "uniform"
    return d


def _sde():
    s = ml_collections.ConfigDict()
    # vp | subvp | ve | learned_vp (VDM's learned schedule, initialised at vp: the network sees gamma(s); the
    # interior minimises the loss's variance; objectives dsm_is, dsm_lw, elbo; truncations at fixed gamma)
    s.name = "vp"
    s.beta_min = 0.1  # vp/subvp: beta(0); learned_vp: its initial (and reference) linear VP
    s.beta_max = 20.0  # vp/subvp: beta(T); learned_vp: likewise
    # learned_vp: learn B(T) by the ELBO's gradient (objective elbo); else keep the linear VP's (b0 + b1) T / 2
    s.learn_end = False
    s.schedule_features = 128  # learned_vp: sigmoid units of the monotone network (models/noise_schedule.py)
    s.schedule_lr_scale = 1.0  # learned_vp: the schedule's Adam runs at this times optim's learning rate
    s.schedule_grad_clip = 0.0  # learned_vp: global-norm clipping of the schedule's gradients; 0 = none
    s.sigma_min = 0.01  # ve: S(0)
    s.sigma_max = 50.0  # ve: S(T), also the prior's std
    s.T = 1.0  # time horizon
    return s


def _model():
    m = ml_collections.ConfigDict()
    m.name = "unet"  # unet | mlp
    # network outputs: drift (a = g * score, the paper) | score | eps; learned_vp: g, sigma those of the
    # reference VP at the same gamma
    m.parameterization = "drift"
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
    # float32 | bfloat16: the network's matmuls, convolutions and activations (parameters, optimizer state,
    # the network's output, the SDE and the ELBO's sums stay float32; models/unet.py says where each cast is)
    m.dtype = "float32"
    return m


def _objective():
    o = ml_collections.ConfigDict()
    o.name = "dsm_is"  # dsm (eps-loss) | dsm_is (ELBO, importance time) | dsm_lw | elbo | ssm
    # training times are drawn from [t_eps, T] (elbo: [0, T]); learned_vp: from the time of the linear VP's
    # gamma(t_eps) (sde.truncation_time)
    o.t_eps = 1e-3
    o.probe = "rademacher"  # Hutchinson probe for elbo / ssm: rademacher | gaussian
    return o


def _optim():
    p = ml_collections.ConfigDict()
    p.name = "adam"  # adam | adamw
    p.lr = 2e-4  # peak learning rate
    p.b1 = 0.9
    p.b2 = 0.999
    p.eps = 1e-8
    p.weight_decay = 0.0  # adamw only
    p.warmup_steps = 0  # linear warm-up from 0 to lr
    p.schedule = "constant"  # constant | cosine (decay to 0 at training.num_steps)
    p.grad_clip = 1.0  # global-norm clipping; 0 disables
    return p


def _training():
    t = ml_collections.ConfigDict()
    t.batch_size = 64  # global batch, split over all devices of all processes
    t.num_steps = 10000  # optimizer steps
    t.max_minutes = 0.0  # stop (and checkpoint) after this wall time; 0 = no limit
    # optimizer steps per compiled call (lax.scan); > 1 amortizes dispatch on accelerators. Keep 1 for U-Nets on
    # CPU: XLA:CPU runs convolutions inside loops ~10x slower (measured, jax 0.10.2; jax-ml/jax#12868)
    t.steps_per_call = 1
    t.ema_decay = 0.999  # EMA of parameters, debiased, used for eval and samples; 0 disables
    t.log_every = 100  # steps between metrics.jsonl lines / progress lines
    t.ckpt_every = 1000  # steps between checkpoints (also at the end and on SIGTERM)
    t.keep = 3  # latest checkpoints kept (the best by test metric is kept too)
    return t


def _eval():
    e = ml_collections.ConfigDict()
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
    return e


def _sampling():
    sm = ml_collections.ConfigDict()
    sm.every = 0  # steps between sample grids; 0 = only at the end
    sm.num = 64  # samples per grid
    sm.steps = 500  # Euler-Maruyama steps
    sm.lam = 0.0  # 0 = reverse SDE ... 1 = probability-flow ODE
    # the samplers' stop time, a reference time (sde.truncation_time): they sample the model's marginal there,
    # where the score of data is finite
    sm.t_min = 1e-3
    return sm


# ----------------------------------------------------------------------------------------------
# The estimators' options in config.eval: (options class, key prefix, the eval config's defaults where they
# differ from the class's).

ESTIMATORS = (
    (ElboOptions, "", dict(draws=4, stratified=True)),
    (OdeOptions, "ode_", dict(divergence="auto")),
    (DequantizationOptions, "", dict(dequantization="auto")),
)


def estimator_defaults() -> dict:
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


def get(config: ml_collections.ConfigDict, key: str) -> object:
    """config["a.b"] for a dotted key."""
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
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
