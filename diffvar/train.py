"""The trainer: config -> workdir, read top to bottom.

    python scripts/train.py --config=configs/digits.py --workdir=runs/digits

Workdir: config.json, checkpoints/ (train state + data-iterator state + meta), metrics.jsonl, tb/ (TensorBoard),
samples/, curves.png, status.json. Re-running on a workdir resumes from its latest checkpoint; SIGTERM saves a
checkpoint and returns (during an evaluation: after its current batch). A checkpoint due at an evaluation step is
written before the evaluation. The test-set ELBO it logs comes from evaluator.Evaluator, the object
scripts/evaluate.py reports with, built once per run (its estimator compiled at the first evaluation).
"""

from __future__ import annotations

import contextlib
import os
import time

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from diffvar import (
    checkpoints,
    config_files,
    data as data_lib,
    distributed,
    experiment,
    files,
    logs,
    plots,
    processes,
)
from diffvar.errors import ConfigError, DiffvarError, NonFiniteLossError, StorageError
from diffvar.evaluator import EvalSpec, Evaluator
from diffvar.passes import Interrupted, paired_difference


def due(step, every, final=False):
    """Whether a periodic action with period `every` (0: never, except at the end) happens at `step`."""
    return final or bool(every and step % every == 0)


def train(config, workdir):
    """Trains `config` in `workdir` (resuming from its latest usable checkpoint); returns the summary dict.

    Raises a DiffvarError before anything is written for a bad config value, data that is not prepared, a
    workdir in use by another trainer, or a workdir whose checkpoints were trained with another model,
    dataset or SDE (naming the keys that differ).
    """
    exp = experiment.build(config, len(jax.devices()))
    with files.exclusive(workdir) if distributed.is_chief() else contextlib.nullcontext():
        return run(exp, workdir)


def open_workdir(exp, workdir):
    """The checkpoint manager of `workdir`, after checking that its checkpoints (if any) are of this
    experiment; writes config.json."""
    mngr = checkpoints.manager(workdir, exp.config.training.keep)
    if mngr.latest_step() is not None and os.path.exists(os.path.join(workdir, "config.json")):
        changes = config_files.identity_changes(config_files.from_workdir(workdir)[0], exp.config)
        if changes:
            raise ConfigError(
                f"workdir {workdir} holds checkpoints of another experiment ({'; '.join(changes)}): "
                f"use a new --workdir, or the values it was trained with"
            )
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    if distributed.is_chief():
        files.write_json_atomic(os.path.join(workdir, "config.json"), config_files.to_json(exp.config))
    return mngr


def initial_state(exp, mesh, mngr, workdir):
    """(TrainState, training iterator): restored from the newest usable checkpoint, or fresh."""
    config = exp.config
    train_iter = data_lib.make_train_iter(
        config.data, config.training.batch_size, config.seed, jax.process_index(), jax.process_count()
    )
    restored = checkpoints.restore_latest(
        mngr, experiment.abstract_state(exp, distributed.replicated(mesh)), warn=logs.say
    )
    if restored is None:
        return jax.device_put(experiment.init_state(exp, config.seed), distributed.replicated(mesh)), train_iter
    train_iter.set_state(restored["data"])
    logs.say("resumed from step %d in %s", int(restored["state"].step), workdir)
    return restored["state"], train_iter


def evaluate(evaluator, params, step, repeats, stop):
    """The periodic test-set evaluation as a metrics.jsonl record (metric, its s.e., and the gap to the exact
    -log p for gmm2d), with progress lines every 30 s; passes.Interrupted when `stop.requested`."""
    key = logs.metric_key(evaluator.exp.unit)
    logs.say(
        "step %d | evaluating on %d test examples, %d pass(es)",
        step,
        evaluator.num_examples,
        repeats or evaluator.spec.repeats,
    )
    results = evaluator.run(params, step, repeats, progress=logs.Progress(0, every=30.0), stop=lambda: stop.requested)
    est = results[evaluator.spec.forms[0]]
    rec = {
        "step": step,
        key: est["mean"],
        f"{key}_stderr": est["stderr"],
        "eval_examples": est["num_examples"],
        "eval_repeats": est["repeats"],
        "eval_seconds": est["seconds"],
        "eval_compile_seconds": est["compile_seconds"],
        "eval_data_verified": evaluator.dataset["verified"],
    }
    gap = ""
    if "exact" in results:  # -ELBO - (-log p) = log p - ELBO, >= 0 in expectation
        rec["test_gap_nats"], rec["test_gap_nats_stderr"] = paired_difference(est["values"], results["exact"]["values"])
        rec["test_exact_nll_nats"] = results["exact"]["mean"]
        gap = f" | gap to exact log p {rec['test_gap_nats']:.4f} +- {rec['test_gap_nats_stderr']:.4f} nats"
    compile_note = f" + {est['compile_seconds']:.1f} s compile" if est["compile_seconds"] else ""
    if not evaluator.dataset["verified"]:
        gap += " | on UNVERIFIED data files"
    logs.say(
        "step %d | test %s %.4f +- %.4f (%d examples, %.1f s%s)%s",
        step,
        evaluator.exp.unit,
        est["mean"],
        est["stderr"],
        est["num_examples"],
        est["seconds"],
        compile_note,
        gap,
    )
    return rec


def save_checkpoint(mngr, exp, state, train_iter, status):
    """A checkpoint of `state` and the training iterator at state.step; status.json says the run goes on."""
    checkpoints.save(mngr, state, train_iter.get_state(), {"step": int(state.step), "unit": exp.unit})
    status.write("running")


def write_samples(exp, draw, params, workdir, step):
    """samples/step_<step>.png from the sampler `draw` (experiment.make_sampler); returns its path."""
    s = exp.config.sampling
    path = os.path.join(workdir, "samples", f"step_{step:08d}.png")
    x, _ = draw(params, jax.random.fold_in(jax.random.PRNGKey(exp.config.seed + 2), step))
    plots.save_samples(exp.info, np.asarray(x), path, title=f"{exp.info.name}: {s.num} samples, lambda={s.lam}")
    return path


def check_finite(losses, step, workdir, config):
    """Raises NonFiniteLossError unless every loss of the call that ended at `step` is finite."""
    if not np.all(np.isfinite(losses)):
        first = step - len(losses) + int(np.argmin(np.isfinite(losses)))
        raise NonFiniteLossError(
            f"non-finite loss at step {first} (losses of the last call: {losses.tolist()}); stopping without "
            f"saving this state. The latest checkpoint in {workdir}/checkpoints is intact; try a lower optim.lr "
            f"(now {config.optim.lr}) or optim.grad_clip > 0."
        )


def log_training(log, exp, step, losses, progress, last_eval, deadline):
    """A metrics.jsonl record of the steps since the last one (mean loss, learning rate, rate) and its line."""
    rec = {
        "step": step,
        "loss": float(np.mean(losses)),
        "lr": float(exp.learning_rate(step)),
        "steps_per_sec": progress.rate(),
    }
    log.write(rec)
    key = logs.metric_key(exp.unit)
    latest = f" | test {exp.unit} {last_eval[key]:.4f}" if last_eval else ""
    logs.say(
        "step %d/%d | loss %.4f | %.1f steps/s%s | elapsed %s | eta %s",
        step,
        exp.config.training.num_steps,
        rec["loss"],
        rec["steps_per_sec"],
        latest,
        logs.fmt_time(progress.elapsed()),
        logs.fmt_time(progress.eta(deadline)),
    )
    progress.mark()


def loop(exp, workdir, mesh, mngr, state, train_iter, log, status, stop):
    """Trains from state.step to training.num_steps (or max_minutes, or SIGTERM): logs, evaluates, checkpoints
    and draws samples when due. Returns (state, the last evaluation's record or None, progress, the sampler)."""
    config, t_cfg, e_cfg = exp.config, exp.config.training, exp.config.eval
    train_step = experiment.make_train_step(exp)
    evaluator = Evaluator(exp, mesh, EvalSpec.from_config(config))
    draw = experiment.make_sampler(exp, config.sampling.num, config.sampling.lam, config.sampling.steps)
    step, key, k = int(state.step), logs.metric_key(exp.unit), t_cfg.steps_per_call
    last_eval, losses = log.last(key), []
    deadline = time.time() + 60 * t_cfg.max_minutes if t_cfg.max_minutes else None
    progress = logs.Progress(t_cfg.num_steps, done=step)
    while step < t_cfg.num_steps:
        batches = np.stack([next(train_iter) for _ in range(k)])
        state, call_losses = train_step(state, distributed.global_array(mesh, batches, P(None, "data")))
        step = status.step = step + k
        check_finite(np.asarray(call_losses), step, workdir, config)
        losses.extend(np.asarray(call_losses).tolist())
        progress.update(step)
        final = step >= t_cfg.num_steps or (deadline is not None and time.time() > deadline)
        if due(step, t_cfg.log_every, final or stop.requested):
            log_training(log, exp, step, losses, progress, last_eval, deadline)
            losses = []
        with progress.paused():  # the rate counts training steps only
            saved = stop.requested or due(step, t_cfg.ckpt_every, final)
            if saved:  # before the evaluation: a run stopped during it keeps this step
                save_checkpoint(mngr, exp, state, train_iter, status)
            if stop.requested:  # SIGTERM: no evaluation
                break
            if due(step, e_cfg.every, final):
                repeats = (e_cfg.final_repeats or e_cfg.repeats) if final else e_cfg.repeats
                try:
                    last_eval = evaluate(evaluator, state.ema_params, step, repeats, stop)
                except Interrupted:  # SIGTERM during the evaluation: keep this step
                    if not saved:
                        save_checkpoint(mngr, exp, state, train_iter, status)
                    break
                log.write(last_eval)
                if saved and distributed.is_chief():
                    checkpoints.record_metric(mngr, step, last_eval[key])
            if distributed.is_chief() and not final and due(step, config.sampling.every):
                write_samples(exp, draw, state.ema_params, workdir, step)
        if final:
            break
    return state, last_eval, progress, draw


def run(exp, workdir):
    """The run itself, in a workdir this process holds: setup, the loop, finish."""
    config, t_cfg = exp.config, exp.config.training
    # ---------------------------------------------------------------- setup
    mesh = distributed.make_mesh()
    mngr = open_workdir(exp, workdir)
    state, train_iter = initial_state(exp, mesh, mngr, workdir)
    step = int(state.step)
    if step == 0:
        d = jax.devices()
        logs.say(
            "training %s for %d steps on %d %s device(s) in %d process(es), batch %d",
            config.model.name,
            t_cfg.num_steps,
            len(d),
            d[0].platform,
            jax.process_count(),
            t_cfg.batch_size,
        )
    log = logs.MetricsLog(workdir, step)
    # ---------------------------------------------------------------- the loop
    with logs.Status(workdir, t_cfg.num_steps, step) as status, processes.Stop() as stop:
        try:
            state, last_eval, progress, draw = loop(exp, workdir, mesh, mngr, state, train_iter, log, status, stop)
        except DiffvarError:
            raise
        except OSError as e:  # disk full, permissions: orbax writes a temporary directory, so no step is torn
            raise StorageError(
                f"cannot write to {workdir} at step {status.step}: {e}; the checkpoint at step "
                f"{mngr.latest_step()} is intact: free space (or fix permissions) and re-run to "
                f"resume"
            ) from None
        finally:  # any other error is a bug (a peer's loss included: cli.run waits for jax to end the process)
            log.close()
        # ------------------------------------------------------------ finish
        step = int(state.step)
        if stop.requested:
            status.write("interrupted")
            logs.say("SIGTERM: saved a checkpoint at step %d in %s; re-run to resume", step, workdir)
            mngr.close()
            return {"step": step, "interrupted": True}
        summary = {
            "step": step,
            "unit": exp.unit,
            "workdir": os.path.abspath(workdir),
            "checkpoints": checkpoints.directory(workdir),
        }
        if distributed.is_chief():
            summary["samples"] = write_samples(exp, draw, state.ema_params, workdir, step)
            plots.save_training_curves(os.path.join(workdir, "curves.png"), log.path)
            plots.save_noise_schedule(
                os.path.join(workdir, "noise_schedule.png"), exp.sde_of(state.ema_params), exp.schedule.reference
            )
        result = {name: v for name, v in (last_eval or {}).items() if name.startswith("test_")}
        summary.update(result, minutes=progress.elapsed() / 60)
        status.write("finished", result=result or None)
        mngr.close()
        return summary
