"""The trainer: config -> workdir, one top-to-bottom function.

    python scripts/train.py --config=configs/digits.py --workdir=runs/digits

Workdir: config.json, checkpoints/ (train state + data-iterator state + meta), metrics.jsonl, tb/
(TensorBoard), samples/, curves.png, status.json. Re-running on a workdir resumes from its latest checkpoint;
SIGTERM saves a checkpoint and returns. The test-set ELBO it logs is estimate.elbo, the code
scripts/evaluate.py reports with, built and compiled once per run.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from diffvar import checkpoints, config as config_lib, data as data_lib, distributed, estimate, experiment, logs
from diffvar import files, plots, samples
from diffvar.errors import ConfigError, DiffvarError, NonFiniteLossError, PeerError, StorageError


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


def run(exp, workdir):
    """The run itself, in a workdir this process holds: setup, the loop, finish."""
    # ---------------------------------------------------------------- setup
    config = exp.config
    mesh = distributed.make_mesh()
    t_cfg, e_cfg, s_cfg = config.training, config.eval, config.sampling
    chief = distributed.is_chief()
    mngr = checkpoints.manager(workdir, t_cfg.keep)
    if mngr.latest_step() is not None and os.path.exists(os.path.join(workdir, "config.json")):
        changes = config_lib.identity_changes(config_lib.from_workdir(workdir)[0], config)
        if changes:
            raise ConfigError(f"workdir {workdir} holds checkpoints of another experiment ({'; '.join(changes)}): "
                              f"use a new --workdir, or the values it was trained with")
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    if chief:
        files.write_json_atomic(os.path.join(workdir, "config.json"), config_lib.to_json(config))

    state = jax.device_put(experiment.init_state(exp, config.seed), distributed.replicated(mesh))
    train_iter = data_lib.make_train_iter(config.data, t_cfg.batch_size, config.seed,
                                          jax.process_index(), jax.process_count())
    best_metric = None
    restored = checkpoints.restore_latest(mngr, experiment.abstract_state(exp, distributed.replicated(mesh)),
                                          warn=logs.say)
    if restored is not None:
        state, meta = restored["state"], restored["meta"]
        train_iter.set_state(restored["data"])
        best_metric = meta.get("best_metric")
        logs.say("resumed from step %d in %s", int(state.step), workdir)
    step = int(state.step)
    if chief and step == 0:
        d = jax.devices()
        logs.say("training %s for %d steps on %d %s device(s) in %d process(es), batch %d", config.model.name,
                 t_cfg.num_steps, len(d), d[0].platform, jax.process_count(), t_cfg.batch_size)
    log = logs.MetricsLog(workdir, step)
    unit = exp.unit
    last_eval = log.last(f"test_{unit}")
    logs.write_status(workdir, "running", step, t_cfg.num_steps)

    # Built once: the periodic evaluation reuses its compiled ELBO function and its test batches.
    train_call = experiment.make_train_step(exp)
    eval_batches = estimate.split_batches(exp, mesh, e_cfg.split, estimate.batch_size(
        e_cfg.batch_size, e_cfg.max_examples, len(jax.devices()), exp.info.size(e_cfg.split)), e_cfg.max_examples)
    elbo_fn = experiment.make_elbo_fn(exp, e_cfg.form, e_cfg.time_sampling, e_cfg.probe, e_cfg.divergence)
    compiled_elbo = None
    exact = estimate.exact_nll(exp, eval_batches)
    draw = samples.make_sampler(exp, s_cfg.num, s_cfg.lam, s_cfg.steps) if chief else None

    def evaluate(step, final):
        nonlocal compiled_elbo
        key = estimate.pass_key(config.seed + 1, step, e_cfg.form)
        compile_seconds = 0.0
        if compiled_elbo is None:
            compiled_elbo, compile_seconds = estimate.compile(elbo_fn, state.ema_params, eval_batches[0][0], key)
        repeats = (e_cfg.final_repeats or e_cfg.repeats) if final else e_cfg.repeats
        res = estimate.elbo(compiled_elbo, state.ema_params, key, eval_batches, repeats)
        rec = {"step": step, f"test_{unit}": res["mean"], f"test_{unit}_stderr": res["stderr"],
               "eval_examples": res["num_examples"], "eval_repeats": repeats, "eval_seconds": res["seconds"],
               "eval_compile_seconds": compile_seconds}
        gap = ""
        if exact is not None:  # -ELBO - (-log p) = log p - ELBO, >= 0 in expectation
            rec["test_gap_nats"], rec["test_gap_nats_stderr"] = estimate.paired_difference(res["values"],
                                                                                           exact["values"])
            rec["test_exact_nll_nats"] = exact["mean"]
            gap = f" | gap to exact log p {rec['test_gap_nats']:.4f} +- {rec['test_gap_nats_stderr']:.4f} nats"
        log.write(rec)
        logs.say("step %d | test %s %.4f +- %.4f (%d examples, %.1f s%s)%s", step, unit, res["mean"], res["stderr"],
                 res["num_examples"], res["seconds"], f" + {compile_seconds:.1f} s compile" if compile_seconds else "",
                 gap)
        return rec

    def write_samples(step):
        path = os.path.join(workdir, "samples", f"step_{step:08d}.png")
        x, _ = draw(state.ema_params, jax.random.fold_in(jax.random.PRNGKey(config.seed + 2), step))
        samples.write(exp, np.asarray(x), path, title=f"{exp.info.name}: {s_cfg.num} samples, lambda={s_cfg.lam}")
        return path

    def checkpoint(step, rec=None):
        nonlocal best_metric
        metric = rec[f"test_{unit}"] if rec else None
        if metric is not None and (best_metric is None or metric < best_metric):
            best_metric = metric
        checkpoints.save(mngr, state, train_iter.get_state(),
                         {"step": step, "test_metric": metric, "best_metric": best_metric, "unit": unit})
        logs.write_status(workdir, "running", step, t_cfg.num_steps)

    # ---------------------------------------------------------------- the loop
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    k = t_cfg.steps_per_call
    deadline = time.time() + 60 * t_cfg.max_minutes if t_cfg.max_minutes else None
    progress = logs.Progress(t_cfg.num_steps, done=step)
    pending = []
    try:
        while step < t_cfg.num_steps:
            batches = np.stack([next(train_iter) for _ in range(k)])
            state, losses = train_call(state, distributed.global_array(mesh, batches, P(None, "data")))
            losses = np.asarray(losses)
            step += k
            if not np.all(np.isfinite(losses)):
                raise NonFiniteLossError(
                    f"non-finite loss at step {step - k + int(np.argmin(np.isfinite(losses)))} "
                    f"(losses of the last call: {losses.tolist()}); stopping without saving this state. "
                    f"The latest checkpoint in {workdir}/checkpoints is intact; try a lower optim.lr "
                    f"(now {config.optim.lr}) or optim.grad_clip > 0.")
            pending.extend(losses.tolist())
            progress.update(step)
            interrupted = stop["signal"] is not None
            final = step >= t_cfg.num_steps or (deadline is not None and time.time() > deadline)
            if due(step, t_cfg.log_every, final or interrupted):
                rec = {"step": step, "loss": float(np.mean(pending)), "lr": float(exp.schedule(step)),
                       "steps_per_sec": progress.rate()}
                log.write(rec)
                latest = f" | test {unit} {last_eval[f'test_{unit}']:.4f}" if last_eval else ""
                logs.say("step %d/%d | loss %.4f | %.1f steps/s%s | elapsed %s | eta %s", step, t_cfg.num_steps,
                         rec["loss"], rec["steps_per_sec"], latest, logs.fmt_time(progress.elapsed()),
                         logs.fmt_time(progress.eta(deadline)))
                pending = []
                progress.mark()
            if interrupted:  # SIGTERM: save what we have, no evaluation
                checkpoint(step)
                break
            rec = None
            with progress.paused():  # the rate counts training steps only
                if due(step, e_cfg.every, final):
                    rec = last_eval = evaluate(step, final)
                if due(step, t_cfg.ckpt_every, final):
                    checkpoint(step, rec)
                if chief and not final and due(step, s_cfg.every):
                    write_samples(step)
            if final:
                break
    except DiffvarError as e:
        logs.write_status(workdir, "failed", step, t_cfg.num_steps, error=str(e), kind=e.kind)
        raise
    except OSError as e:  # disk full, permissions: orbax writes into a temporary directory, so no step is torn
        latest = mngr.latest_step()
        error = StorageError(f"cannot write to {workdir} at step {step}: {e}; the checkpoint at step {latest} is "
                             f"intact: free space (or fix permissions) and re-run to resume from it")
        logs.write_status(workdir, "failed", step, t_cfg.num_steps, error=str(error), kind=error.kind)
        raise error from None
    except Exception as e:
        if distributed.peer_lost(e):
            error = PeerError(f"another process of this {jax.process_count()}-process run stopped at step {step} "
                              f"({distributed.first_line(e)}); the checkpoint at step {mngr.latest_step()} is "
                              f"intact: restart every process to resume from it")
            logs.write_status(workdir, "failed", step, t_cfg.num_steps, error=str(error), kind=error.kind)
            raise error from None
        logs.write_status(workdir, "failed", step, t_cfg.num_steps, error=f"{type(e).__name__}: {e}", kind="crash")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        log.close()

    # ---------------------------------------------------------------- finish
    if stop["signal"] is not None:
        logs.write_status(workdir, "interrupted", step, t_cfg.num_steps)
        logs.say("SIGTERM: saved a checkpoint at step %d in %s; re-run to resume", step, workdir)
        mngr.close()
        return {"step": step, "interrupted": True}
    summary = {"step": step, "unit": unit, "workdir": os.path.abspath(workdir), "checkpoints": checkpoints.directory(workdir)}
    if chief:
        summary["samples"] = write_samples(step)
        plots.save_training_curves(os.path.join(workdir, "curves.png"), log.path)
    result = {key: v for key, v in (last_eval or {}).items() if key.startswith("test_")}
    summary.update(result, minutes=progress.elapsed() / 60)
    logs.write_status(workdir, "finished", step, t_cfg.num_steps, result=result or None)
    mngr.close()
    return summary
