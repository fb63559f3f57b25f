"""The trainer end to end on a tiny gmm2d run: outputs, exact resume, SIGTERM/SIGKILL, devices, bad configs."""

import json
import os
import re
import signal
import time

import jax
import numpy as np
import pytest

from diffvar import checkpoints, config as config_lib, data, experiment, train as train_lib
from diffvar.errors import ConfigError, NonFiniteLossError
from tests.helpers import (
    assert_one_error_line,
    assert_same_params,
    load_config,
    losses,
    params_at,
    start_training,
    tiny_config,
    train_script,
)


def run_script(workdir, *flags, env=None, wait=True):
    return train_script(workdir, *flags, env=env, wait=wait)


def test_train_writes_outputs_and_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    summary = train_lib.train(tiny_config(), workdir)
    assert summary["step"] == 40 and np.isfinite(summary["test_nats"]) and summary["test_nats_stderr"] > 0
    assert "test_gap_nats" in summary  # gmm2d has an exact density: the gap to it is reported
    names = set(os.listdir(workdir))
    assert {"config.json", "checkpoints", "metrics.jsonl", "tb", "samples", "curves.png"} <= names
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tb")))
    assert os.listdir(os.path.join(workdir, "samples")) == ["step_00000040.png"]
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records if "loss" in r] == [10, 20, 30, 40]
    assert all({"loss", "lr", "steps_per_sec"} <= set(r) for r in records if "loss" in r)
    assert [r["step"] for r in records if "test_nats" in r] == [20, 40]
    # The periodic evaluation is compiled once: only the first evaluation spends time compiling.
    compile_seconds = [r["eval_compile_seconds"] for r in records if "test_nats" in r]
    assert compile_seconds[0] > 0 and compile_seconds[1:] == [0.0]
    status = json.load(open(os.path.join(workdir, "status.json")))
    assert status["status"] == "finished" and status["step"] == 40
    # Checkpoints are written before their evaluation; the test metric is attached afterwards: orbax sees it.
    mngr = checkpoints.manager(workdir, read_only=True)
    assert mngr.metrics(40)["test_metric"] == summary["test_nats"] and mngr.best_step() in (20, 40)
    assert status["result"]["test_nats"] == summary["test_nats"]
    # Keeps the latest 2 plus the best evaluated one.
    steps = sorted(checkpoints.manager(workdir, read_only=True).all_steps())
    assert steps[-2:] == [30, 40] and set(steps) <= {20, 30, 40}
    # Resume: a longer run continues from step 40 and is identical to training 60 steps straight away.
    summary = train_lib.train(tiny_config(**{"training.num_steps": 60}), workdir)
    assert summary["step"] == 60
    straight = str(tmp_path / "straight")
    train_lib.train(tiny_config(**{"training.num_steps": 60}), straight)
    assert_same_params(params_at(workdir)[1], params_at(straight)[1])
    assert losses(workdir) == losses(straight)


def test_evaluations_do_not_add_compilations(tmp_path):
    """Compiled functions are built once per run: four evaluations compile exactly as much as one."""
    import jax.monitoring

    counts = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _secs, **kw: (
            counts.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
        )
    )
    compiles = {}
    for every in (40, 10):
        start = len(counts)
        train_lib.train(tiny_config(**{"eval.every": every}), str(tmp_path / f"every{every}"))
        compiles[every] = len(counts) - start
    assert compiles[10] == compiles[40] > 0, compiles


@pytest.mark.parametrize(
    "flag, fragment",
    [
        ("--config.model.ch=0", "model.ch=0 must be an integer >= 2"),
        ("--config.objective.t_eps=1.5", "objective.t_eps=1.5 must be in (0, sde.T=1.0)"),
        ("--config.data.name=mnist", "is not prepared in data_dir="),
    ],
)
def test_bad_digits_values_and_missing_data_give_one_line_and_write_nothing(tmp_path, flag, fragment):
    workdir = tmp_path / "run"
    r = train_script(str(workdir), flag, f"--config.data.data_dir={tmp_path / 'data'}", config="digits")
    assert_one_error_line(r, fragment)
    assert not os.path.exists(workdir / "checkpoints")


def test_sigkill_at_any_moment_then_resume_is_bitwise_identical(tmp_path):
    ref = str(tmp_path / "ref")
    assert run_script(ref, "--config.training.num_steps=200").returncode == 0
    killed = str(tmp_path / "killed")
    proc = run_script(killed, "--config.training.num_steps=200", wait=False)
    ckpt = os.path.join(killed, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt))):
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere in the middle of training (possibly mid-save)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = run_script(killed, "--config.training.num_steps=200")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_params(params_at(killed, 200)[1], params_at(ref, 200)[1])
    assert losses(killed) == losses(ref)


def test_sigterm_saves_and_exits_zero(tmp_path):
    workdir = str(tmp_path / "run")
    proc = start_training(workdir, "--config.training.num_steps=100000", until="step 20/")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    step, _ = params_at(workdir)
    assert step >= 20 and step % 10 == 0
    assert "SIGTERM" in out


def test_sigterm_during_the_final_evaluation_stops_it_with_the_checkpoint_kept(tmp_path):
    """The checkpoint of the last step is written before the final evaluation, which prints progress lines
    with an ETA; SIGTERM during it ends the run within seconds (exit 0, status interrupted), keeping it."""
    workdir = str(tmp_path / "run")
    proc = start_training(
        workdir,
        "--config.training.num_steps=20",
        "--config.eval.final_repeats=100000",
        until="ELBO: pass 1/100000, batch 1/1",
    )
    proc.send_signal(signal.SIGTERM)
    start = time.time()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and time.time() - start < 30, out
    assert params_at(workdir)[0] == 20
    assert json.load(open(os.path.join(workdir, "status.json")))["status"] == "interrupted"
    assert re.search(r"ELBO: pass 1/100000, batch 1/1, [\d.]+ s, ETA \d+:\d\d:\d\d", proc.matched)
    assert not any("test_nats" in line for line in open(os.path.join(workdir, "metrics.jsonl")))


def test_same_loss_curve_on_one_and_four_devices(tmp_path):
    one, four = str(tmp_path / "one"), str(tmp_path / "four")
    assert run_script(one, "--config.training.num_steps=50").returncode == 0
    r = run_script(
        four, "--config.training.num_steps=50", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    )
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = losses(one), losses(four)
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], rtol=1e-4)
    # The final evaluation (EMA params, same eval noise) agrees too.
    ev = lambda w: [r["test_nats"] for r in map(json.loads, open(os.path.join(w, "metrics.jsonl"))) if "test_nats" in r]
    np.testing.assert_allclose(ev(one), ev(four), rtol=1e-4)


def test_two_processes_on_localhost_agree_with_one(tmp_path):
    one = str(tmp_path / "one")
    assert run_script(one, "--config.training.num_steps=30").returncode == 0
    two = str(tmp_path / "two")
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [
        run_script(
            two,
            "--config.training.num_steps=30",
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            wait=False,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    a, b = losses(one), losses(two)
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], rtol=1e-4)


def test_non_finite_loss_stops_without_a_checkpoint(tmp_path, monkeypatch):
    real = experiment.get_objective

    def exploding(name, sde, *args, **kwargs):
        loss = real(name, sde, *args, **kwargs)
        return lambda score_fn, x, rng: loss(score_fn, x, rng) * jax.numpy.inf

    monkeypatch.setattr(experiment, "get_objective", exploding)
    workdir = str(tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 0.*optim.lr"):
        train_lib.train(tiny_config(), workdir)
    assert checkpoints.manager(workdir, read_only=True).latest_step() is None
    status = json.load(open(os.path.join(workdir, "status.json")))
    assert status["status"] == "failed" and status["kind"] == "non_finite" and "optim.lr" in status["error"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"data.name": "imagenet"}, r"data.name='imagenet'.*digits"),
        ({"model.name": "transformer"}, r"model.name='transformer'.*unet"),
        ({"objective.name": "vlb"}, r"objective.name='vlb'.*dsm_is"),
        ({"optim.lr": -1e-3}, r"optim.lr=-0.001 must be a number > 0"),
        ({"eval.split": "validation"}, r"eval.split='validation'.*test"),
        (
            {"training.batch_size": 513},
            r"training.batch_size=513 must be divisible by the number of devices \(2; on CPU",
        ),
        ({"training.ckpt_every": 15}, r"training.ckpt_every=15 must be a multiple of training.steps_per_call=10"),
        ({"sampling.lam": 1.5}, r"sampling.lam=1.5 must be a number in \[0, 1\]"),
        ({"model.ch": 0}, r"model.ch=0 must be an integer >= 2"),
        ({"model.ch_mult": ()}, r"model.ch_mult=\(\) must be a non-empty sequence"),
        ({"model.activation": "gelu"}, r"model.activation='gelu'.*softplus"),
        ({"objective.t_eps": 2.0}, r"objective.t_eps=2.0 must be in \(0, sde.T=1.0\)"),
        ({"objective.t_eps": 0.0}, r"objective.t_eps=0.0 must be a number > 0"),
        ({"sde.beta_max": 0.05}, r"sde.beta_min=0.1 must be < sde.beta_max=0.05"),
        ({"data.dequantization": "truncated_normal"}, r"data.dequantization='truncated_normal'.*uniform, none"),
        ({"eval.dequantization": "none"}, r"eval.dequantization='none'.*auto, uniform, truncated_normal"),
    ],
)
def test_bad_config_values_fail_before_compilation(overrides, match):
    c = tiny_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        c[section][name] = value
    with pytest.raises(ConfigError, match=match):
        config_lib.validate(c, num_devices=2)


def test_bad_config_from_the_command_line_gives_one_clear_line(tmp_path):
    r = run_script(str(tmp_path / "run"), "--config.objective.name=vlb")
    assert_one_error_line(r, "objective.name='vlb' is not allowed")
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_gmm2d_config_reaches_the_exact_log_density(tmp_path):
    """Acceptance: configs/gmm2d.py as shipped trains (~1.5 min on 2 CPU cores) to a test ELBO within
    0.05 nats/example of the exact log density (the gap log p - ELBO is >= 0 in expectation)."""
    summary = train_lib.train(load_config("gmm2d"), str(tmp_path / "gmm2d"))
    gap, se = summary["test_gap_nats"], summary["test_gap_nats_stderr"]
    assert se < 0.03
    assert abs(gap) < 0.05, (gap, se)
    assert gap > -4 * se


def test_the_ema_is_debiased():
    """experiment.ema_decay_at makes the EMA optax.ema(decay, debias=True)'s: a weighted mean of the trained
    parameters, nothing of the initialisation (the undebiased EMA keeps decay^n of it). Through the train step:
    after one step the EMA is the parameters themselves."""
    import optax

    decay, rng = 0.9, np.random.default_rng(0)
    ps = [rng.normal(size=3).astype(np.float32) for _ in range(30)]
    ema, ref = np.full(3, 1e3, np.float32), optax.ema(decay, debias=True)
    ref_state = ref.init(ps[0])
    for n, p in enumerate(ps):
        ema = np.asarray(optax.incremental_update(p, ema, 1.0 - experiment.ema_decay_at(decay, n)))
        expected, ref_state = ref.update(p, ref_state)
        np.testing.assert_allclose(ema, expected, rtol=1e-5, atol=1e-5)

    exp = experiment.build(tiny_config(**{"training.steps_per_call": 1}), 1)
    state = experiment.init_state(exp, 0)
    batch = np.asarray(next(data.make_train_iter(exp.config.data, 8, 0, 0, 1)))
    state, _ = experiment.make_train_step(exp)(state, batch[None])
    assert_same_params(state.ema_params, state.params)
