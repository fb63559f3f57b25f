"""The trainer: config -> workdir. The loop alone owns state, devices and I/O.

    python scripts/train.py --config=configs/digits.py --workdir=runs/digits

Workdir: config.json, checkpoints/ (orbax: train state + data-iterator state + meta), metrics.jsonl,
tb/ (TensorBoard events), samples/, curves.png. Re-running on a workdir resumes from its latest checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

from diffvar import data as data_lib
from diffvar import likelihood, plots, sampling
from diffvar.files import atomic_path, write_json_atomic
from diffvar.models import MODELS, make_model
from diffvar.models.param import PARAMETERISATIONS, make_score_fn
from diffvar.objectives import OBJECTIVES, get_objective
from diffvar.sde import SDES, make_sde


class ConfigError(ValueError):
    """A config value that cannot work; raised before anything is compiled or written."""


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss; no checkpoint of that state is written."""


# ----------------------------------------------------------------------------------------------
# Config validation (before compilation) and the experiment's pure parts.


def _choice(config, key, allowed):
    value = config
    for part in key.split("."):
        value = value[part]
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {tuple(allowed)}")


def _positive(config, key, zero_ok=False, integer=False):
    value = config
    for part in key.split("."):
        value = value[part]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if zero_ok else value > 0) and (not integer or float(value).is_integer())
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key}={value!r} must be {kind} {'>= 0' if zero_ok else '> 0'}")


def validate_config(config, num_devices=1):
    """Checks every value the trainer relies on; raises ConfigError naming the key and what is allowed."""
    _choice(config, "data.name", data_lib.DATASETS)
    _choice(config, "data.transform", likelihood.TRANSFORMS)
    _choice(config, "sde.name", tuple(SDES))
    _choice(config, "model.name", MODELS)
    _choice(config, "model.parameterization", PARAMETERISATIONS)
    _choice(config, "objective.name", OBJECTIVES)
    _choice(config, "objective.probe", likelihood.PROBES)
    _choice(config, "optim.name", ("adam", "adamw"))
    _choice(config, "optim.schedule", ("constant", "cosine"))
    _choice(config, "eval.split", data_lib.SPLITS)
    _choice(config, "eval.form", likelihood.FORMS)
    _choice(config, "eval.time_sampling", ("uniform", "importance"))
    _choice(config, "eval.probe", likelihood.PROBES)
    _choice(config, "eval.divergence", likelihood.DIVERGENCES)
    for key in ("optim.lr", "training.batch_size", "training.num_steps", "training.steps_per_call",
                "training.log_every", "training.ckpt_every", "training.keep", "eval.batch_size", "eval.repeats",
                "sampling.num", "sampling.steps"):
        _positive(config, key, integer=key != "optim.lr")
    for key in ("optim.warmup_steps", "eval.every", "eval.max_examples", "eval.final_repeats", "sampling.every"):
        _positive(config, key, zero_ok=True, integer=True)
    for key in ("optim.grad_clip", "optim.weight_decay", "training.max_minutes"):
        _positive(config, key, zero_ok=True)
    if not 0.0 <= config.training.ema_decay < 1.0:
        raise ConfigError(f"training.ema_decay={config.training.ema_decay!r} must be in [0, 1)")
    if not 0.0 <= config.sampling.lam <= 1.0:
        raise ConfigError(f"sampling.lam={config.sampling.lam!r} must be in [0, 1]")
    if not 0.0 < config.data.logit_alpha < 0.5:
        raise ConfigError(f"data.logit_alpha={config.data.logit_alpha!r} must be in (0, 0.5)")
    t = config.training
    if config.optim.schedule == "cosine" and config.optim.warmup_steps >= t.num_steps:
        raise ConfigError(f"optim.warmup_steps={config.optim.warmup_steps} must be < training.num_steps="
                          f"{t.num_steps} with optim.schedule='cosine'")
    for key in ("training.batch_size", "eval.batch_size"):
        b = config[key.split(".")[0]][key.split(".")[1]]
        if b % num_devices:
            raise ConfigError(f"{key}={b} must be divisible by the number of devices ({num_devices})")
    k = t.steps_per_call
    for key in ("training.log_every", "training.ckpt_every", "eval.every", "sampling.every"):
        v = config[key.split(".")[0]][key.split(".")[1]]
        if v % k:
            raise ConfigError(f"{key}={v} must be a multiple of training.steps_per_call={k}")
    if t.num_steps % k:
        raise ConfigError(f"training.num_steps={t.num_steps} must be a multiple of training.steps_per_call={k}")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a config determines that is not state: pure functions and static metadata."""

    config: ml_collections.ConfigDict
    info: data_lib.DataInfo
    sde: object
    model: object
    loss_fn: object
    tx: optax.GradientTransformation
    schedule: object

    @property
    def dim(self):
        return math.prod(self.info.shape)

    def apply(self, params, y, t, rng=None):
        """Network output [B, ...]; dropout is active when a dropout rng is given."""
        kwargs = dict(train=True, rngs={"dropout": rng}) if rng is not None else {}
        return self.model.apply({"params": params}, y, t, **kwargs)

    def score_fn(self, params, rng=None):
        """score_fn(y, t) of these parameters."""
        fn = make_score_fn(lambda p, y, t: self.apply(p, y, t, rng), self.sde, self.config.model.parameterization)
        return lambda y, t: fn(params, y, t)

    def to_model_space(self, rng, x):
        d = self.config.data
        return likelihood.to_model_space(rng, x, self.info.levels, d.transform, d.logit_alpha)

    def to_data_space(self, y):
        """Model-space samples -> [0, 1] images (or the 2-D points themselves)."""
        if self.info.levels is None:
            return y
        return likelihood.from_model_space(y, self.config.data.transform, self.config.data.logit_alpha)


def _sde_kwargs(cfg):
    if cfg.name == "ve":
        return dict(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, T=cfg.T)
    return dict(beta_min=cfg.beta_min, beta_max=cfg.beta_max, T=cfg.T)


def make_optimizer(cfg, num_steps):
    """optax chain: optional global-norm clipping, then Adam/AdamW on a warm-up (+ cosine) schedule."""
    if cfg.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1), num_steps)
    elif cfg.warmup_steps:
        schedule = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    else:
        schedule = optax.constant_schedule(cfg.lr)
    if cfg.name == "adamw":
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    else:
        opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    clip = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
    return optax.chain(*clip, opt), schedule


def build(config, num_devices=1):
    """Validates the config and builds the Experiment (reads dataset metadata; compiles nothing)."""
    validate_config(config, num_devices)
    info = data_lib.get_info(config.data)
    try:
        sde = make_sde(config.sde.name, **_sde_kwargs(config.sde))
    except ValueError as e:
        raise ConfigError(f"sde: {e}") from None
    model = make_model(config.model, info.shape)
    loss_fn = get_objective(config.objective.name, sde, config.objective.t_eps, config.objective.probe)
    tx, schedule = make_optimizer(config.optim, config.training.num_steps)
    return Experiment(config, info, sde, model, loss_fn, tx, schedule)


# ----------------------------------------------------------------------------------------------
# State and the compiled steps.


@struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    ema_params: dict
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32[2] key


def init_state(exp, seed):
    rng = jax.random.PRNGKey(seed)
    k_init, k_state = jax.random.split(rng)
    b = 2
    params = exp.model.init(k_init, jnp.zeros((b,) + exp.info.shape), jnp.ones((b,)))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=exp.tx.init(params), rng=k_state)


def make_train_step(exp):
    """Compiled (state, batch [K, B, ...]) -> (state, losses [K]): K optimizer steps in one call (lax.scan)."""
    decay = exp.config.training.ema_decay

    def loss(params, x, rng):
        k_pre, k_loss, k_drop = jax.random.split(rng, 3)
        y, _ = exp.to_model_space(k_pre, x)
        return jnp.mean(exp.loss_fn(exp.score_fn(params, k_drop), y, k_loss))

    def one_step(state, x):
        rng, k = jax.random.split(state.rng)
        value, grads = jax.value_and_grad(loss)(state.params, x, jax.random.fold_in(k, state.step))
        updates, opt_state = exp.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = optax.incremental_update(params, state.ema_params, 1.0 - decay) if decay else params
        return TrainState(state.step + 1, params, ema, opt_state, rng), value

    def train_call(state, batches):
        if batches.shape[0] == 1:  # no loop: XLA:CPU runs conv backprops inside while loops ~10x slower
            state, value = one_step(state, batches[0])
            return state, value[None]
        return jax.lax.scan(one_step, state, batches)

    # Shardings come from the arguments (state replicated, batch split over 'data'). Passing them to jit as
    # in/out_shardings instead makes XLA:CPU run this step ~15x slower on one device (measured, jax 0.10.2).
    return jax.jit(train_call, donate_argnums=(0,))


def make_eval_fn(exp):
    """Compiled (params, x [B, ...], rng) -> per-example (ELBO in nats of y, log|dy/dz|), each [B]."""
    e = exp.config.eval

    def fn(params, x, rng):
        k_pre, k_elbo = jax.random.split(rng)
        y, logdet = exp.to_model_space(k_pre, x)
        value = likelihood.elbo(exp.score_fn(params), exp.sde, y, k_elbo, num_samples=1, form=e.form,
                                divergence=e.divergence, probe=e.probe, time_sampling=e.time_sampling,
                                t_eps=exp.config.objective.t_eps)
        return value, logdet

    return jax.jit(fn)  # shardings follow the arguments, as in make_train_step


def evaluate_elbo(exp, mesh, params, rng, split=None, repeats=None, max_examples=0, progress=None):
    """Test-set ELBO with `params`: dict of mean and standard error, in bpd (images) or nats (toys).

    Each example's estimate is averaged over `repeats` draws; the s.e. is over examples (it includes the Monte
    Carlo noise). Toys with an exact density also get the gap log p(x) - ELBO(x) (>= 0 in expectation).
    """
    e = exp.config.eval
    split, repeats = split or e.split, repeats or e.repeats
    eval_fn = make_eval_fn(exp)
    nproc, pid = jax.process_count(), jax.process_index()
    per_example, exact = [], []
    start = time.time()
    for i, (x, mask) in enumerate(data_lib.iterate_split(exp.config.data, split, e.batch_size, pid, nproc)):
        gx = _global_array(mesh, x, P("data"))
        total = 0.0
        for r in range(repeats):
            value, logdet = eval_fn(params, gx, jax.random.fold_in(jax.random.fold_in(rng, i), r))
            value, logdet = _gather(value), _gather(logdet)
            if exp.info.levels is not None:
                total = total + likelihood.bpd(value, logdet, exp.dim, exp.info.levels)
            else:
                total = total - value  # negative ELBO, nats: an upper bound on the NLL
        gmask = _gather(jnp.asarray(mask))
        per_example.append(np.asarray(total / repeats)[gmask])
        if exp.info.exact_logp is not None:
            gxs = _gather(gx) if nproc > 1 else x
            exact.append(-np.asarray(exp.info.exact_logp(jnp.asarray(gxs)))[gmask])
        if progress:
            progress(sum(len(v) for v in per_example), time.time() - start)
        if max_examples and sum(len(v) for v in per_example) >= max_examples:
            break
    values = np.concatenate(per_example).astype(np.float64)
    unit = "bpd" if exp.info.levels is not None else "nats"
    out = {unit: float(values.mean()), f"{unit}_stderr": float(values.std(ddof=1) / math.sqrt(len(values))),
           "num_examples": int(len(values)), "repeats": int(repeats), "seconds": time.time() - start}
    if exact:
        gap = values - np.concatenate(exact)  # -ELBO - (-log p) = log p - ELBO
        out.update(exact_nll_nats=float(np.concatenate(exact).mean()), gap_nats=float(gap.mean()),
                   gap_nats_stderr=float(gap.std(ddof=1) / math.sqrt(len(gap))))
    return out


def _global_array(mesh, local, spec):
    """A global jax.Array from this process's rows (works for one or many processes)."""
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_process_local_data(sharding, np.asarray(local))


def _gather(x):
    """A (possibly multi-process) sharded array as one numpy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save_samples(exp, params, rng, path, num, steps, lam):
    """Draws `num` samples with the lambda-family sampler and writes a PNG grid or a 2-D scatter."""
    fn = jax.jit(lambda p, k: sampling.sample_lambda(exp.score_fn(p), exp.sde, k, (num,) + exp.info.shape,
                                                       lam=lam, steps=steps, t_min=exp.config.objective.t_eps))
    y = np.asarray(exp.to_data_space(fn(params, rng)))
    if exp.info.levels is None:
        logp = (lambda p: np.asarray(exp.info.exact_logp(jnp.asarray(p)))) if exp.info.exact_logp else None
        plots.save_scatter_2d(path, y, logp_fn=logp, title=f"{exp.info.name}: {num} samples, lambda={lam}")
    else:
        plots.save_image_grid(path, y, levels=exp.info.levels)
    return y


# ----------------------------------------------------------------------------------------------
# Checkpoints and logs.


def checkpoint_manager(workdir, keep=3, read_only=False):
    """orbax manager over workdir/checkpoints: items state (TrainState), data (iterator), meta (JSON).

    Keeps the latest `keep` checkpoints plus the best by meta's test metric (lower is better). Saves are
    synchronous and atomic (orbax writes a temporary directory and renames it).
    """
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep),
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m["test_metric"], reverse=True, n=1,
                                      keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=not read_only,
                                           enable_async_checkpointing=False, read_only=read_only)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 item_names=("state", "data", "meta"), options=options)


def save_checkpoint(mngr, state, data_state, meta):
    metrics = {"test_metric": meta["test_metric"]} if meta.get("test_metric") is not None else None
    mngr.save(int(state.step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)
    mngr.wait_until_finished()


def restore_checkpoint(mngr, step, abstract_state):
    """(state, data iterator state, meta) at `step`, with the shardings of abstract_state."""
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return out["state"], out["data"], out["meta"]


def best_step(mngr):
    """The kept step with the lowest test metric, or None when no kept checkpoint has one."""
    best = None
    for step in mngr.all_steps():
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("test_metric") is not None and (best is None or meta["test_metric"] < best[1]):
            best = (step, meta["test_metric"])
    return None if best is None else best[0]


class MetricsLog:
    """metrics.jsonl (one JSON object per line) + TensorBoard events, written by process 0 only."""

    def __init__(self, workdir, resume_step, enabled=True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        # Lines past the checkpoint we resume from describe steps that will be re-run: drop them.
        if os.path.exists(self.path):
            kept = [line for line in plots.read_metrics(self.path) if line.get("step", 0) <= resume_step]
            with atomic_path(self.path) as tmp, open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, record):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, record["step"])
        self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def say(fmt, *args):
    """Progress output: one timestamped line on stdout (absl/orbax INFO logs are left at WARNING)."""
    print(time.strftime("%H:%M:%S ") + (fmt % args if args else fmt), flush=True)


def _fmt_time(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def load_config(workdir):
    """The resolved config a run saved in workdir/config.json."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config.json in workdir {workdir!r}: is it a diffvar training workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


# ----------------------------------------------------------------------------------------------
# The loop.


def train(config, workdir):
    """Trains `config` in `workdir` (resuming from its latest checkpoint) and returns the final summary dict."""
    devices = jax.devices()
    exp = build(config, len(devices))
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))
    t_cfg = config.training
    chief = jax.process_index() == 0
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    if chief:
        write_json_atomic(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))

    replicated = NamedSharding(mesh, P())
    state = jax.device_put(init_state(exp, config.seed), replicated)
    train_iter = data_lib.make_train_iter(config.data, t_cfg.batch_size, config.seed,
                                          jax.process_index(), jax.process_count())
    mngr = checkpoint_manager(workdir, t_cfg.keep)
    best_metric = None
    if mngr.latest_step() is not None:
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
        state, data_state, meta = restore_checkpoint(mngr, mngr.latest_step(), abstract)
        train_iter.set_state(data_state)
        best_metric = meta.get("best_metric")
        say("resumed from step %d in %s", int(state.step), workdir)
    start_step = int(state.step)
    log = MetricsLog(workdir, start_step, enabled=chief)
    train_call = make_train_step(exp)
    unit = "bpd" if exp.info.levels is not None else "nats"

    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    k = t_cfg.steps_per_call
    deadline = time.time() + 60 * t_cfg.max_minutes if t_cfg.max_minutes else None
    pending, t_last, step = [], time.time(), start_step
    last_eval = _last_eval_record(log.path, unit) if chief else None
    t_start = time.time()

    def run_eval(step, final=False):
        repeats = (config.eval.final_repeats or config.eval.repeats) if final else config.eval.repeats
        res = evaluate_elbo(exp, mesh, state.ema_params, jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step),
                            repeats=repeats, max_examples=config.eval.max_examples)
        rec = {"step": step, f"test_{unit}": res[unit], f"test_{unit}_stderr": res[f"{unit}_stderr"],
               "eval_examples": res["num_examples"]}
        if "gap_nats" in res:
            rec.update(test_gap_nats=res["gap_nats"], test_gap_nats_stderr=res["gap_nats_stderr"],
                       test_exact_nll_nats=res["exact_nll_nats"])
        log.write(rec)
        if chief:
            gap = (f" | gap to exact log p {rec['test_gap_nats']:.4f} +- {rec['test_gap_nats_stderr']:.4f} nats"
                   if "test_gap_nats" in rec else "")
            say("step %d | test %s %.4f +- %.4f (%d examples)%s", step, unit, rec[f"test_{unit}"],
                         rec[f"test_{unit}_stderr"], rec["eval_examples"], gap)
        return rec

    def checkpoint(step, rec=None):
        nonlocal best_metric
        metric = rec[f"test_{unit}"] if rec else None
        if metric is not None and (best_metric is None or metric < best_metric):
            best_metric = metric
        save_checkpoint(mngr, state, train_iter.get_state(),
                        {"step": step, "test_metric": metric, "best_metric": best_metric, "unit": unit})

    try:
        while step < t_cfg.num_steps:
            batches = np.stack([next(train_iter) for _ in range(k)])
            state, losses = train_call(state, _global_array(mesh, batches, P(None, "data")))
            losses = np.asarray(losses)
            step += k
            if not np.all(np.isfinite(losses)):
                raise NonFiniteLossError(
                    f"non-finite loss at step {step - k + int(np.argmin(np.isfinite(losses)))} "
                    f"(losses of the last call: {losses.tolist()}); stopping without saving this state. "
                    f"The latest checkpoint in {workdir}/checkpoints is intact; try a lower optim.lr "
                    f"(now {config.optim.lr}) or optim.grad_clip > 0.")
            pending.extend(losses.tolist())
            interrupted = stop["signal"] is not None
            final = step >= t_cfg.num_steps or (deadline is not None and time.time() > deadline)
            if step % t_cfg.log_every == 0 or final or interrupted:
                _log_progress(exp, log, step, pending, t_last, t_start, deadline, last_eval, chief)
                pending, t_last = [], time.time()
            if interrupted:  # SIGTERM: save what we have, no evaluation, exit 0
                checkpoint(step)
                break
            rec = None
            if (config.eval.every and step % config.eval.every == 0) or final:
                rec = last_eval = run_eval(step, final)
                t_last = time.time()
            if step % t_cfg.ckpt_every == 0 or final:
                checkpoint(step, rec)
            if config.sampling.every and step % config.sampling.every == 0 and not final and chief:
                _samples(exp, state, workdir, step)
                t_last = time.time()
            if final:
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
        log.close()
    if stop["signal"] is not None:
        say("SIGTERM: saved a checkpoint at step %d in %s; re-run to resume", step, workdir)
        return {"step": step, "interrupted": True}

    summary = {"step": step, "workdir": os.path.abspath(workdir),
               "checkpoints": os.path.join(os.path.abspath(workdir), "checkpoints")}
    if chief:
        summary["samples"] = _samples(exp, state, workdir, step)
        plots.save_training_curves(os.path.join(workdir, "curves.png"), log.path)
    if last_eval:
        summary.update({k2: v for k2, v in last_eval.items() if k2.startswith("test_")})
    summary["minutes"] = (time.time() - t_start) / 60
    mngr.close()
    return summary


def _log_progress(exp, log, step, pending, t_last, t_start, deadline, last_eval, chief):
    """Writes the metrics line for the steps since the last one and prints the progress line."""
    now = time.time()
    rate = len(pending) / max(now - t_last, 1e-9)
    rec = {"step": step, "loss": float(np.mean(pending)), "lr": float(exp.schedule(step)), "steps_per_sec": rate}
    log.write(rec)
    num_steps = exp.config.training.num_steps
    eta = (num_steps - step) / max(rate, 1e-9)
    if deadline is not None:
        eta = min(eta, deadline - now)
    unit = "bpd" if exp.info.levels is not None else "nats"
    latest = f" | test {unit} {last_eval[f'test_{unit}']:.4f}" if last_eval else ""
    if chief:
        say("step %d/%d | loss %.4f | %.1f steps/s%s | elapsed %s | eta %s", step, num_steps,
                     rec["loss"], rate, latest, _fmt_time(now - t_start), _fmt_time(eta))
    return rec


def _last_eval_record(path, unit):
    """The last metrics.jsonl record with a test metric (after a resume), or None."""
    if not os.path.exists(path):
        return None
    evals = [r for r in plots.read_metrics(path) if f"test_{unit}" in r]
    return evals[-1] if evals else None


def _samples(exp, state, workdir, step):
    s = exp.config.sampling
    path = os.path.join(workdir, "samples", f"step_{step:08d}.png")
    save_samples(exp, state.ema_params, jax.random.fold_in(jax.random.PRNGKey(exp.config.seed + 2), step),
                 path, s.num, s.steps, s.lam)
    return path
