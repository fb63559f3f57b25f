"""Faults injected for real, and bad input at every door: nothing is lost, nothing wrong is reported, and a
user error is one line that says what to fix."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import pytest

from diffvar import checkpoints, train as train_lib
from diffvar.errors import StorageError
from tests.helpers import (
    ROOT,
    TINY_FLAGS,
    assert_one_error_line,
    assert_same_params,
    losses,
    params_at,
    run_script,
    start_training,
    tiny_config,
    train_script,
)


def listing(path):
    """(file, size) of every file under `path`; the workdir lock's size is left out: every start rewrites it with
    its own pid (files.exclusive), whose digit count varies from run to run."""
    return sorted(
        (os.path.relpath(os.path.join(r, f), path), None if f == ".lock" else os.path.getsize(os.path.join(r, f)))
        for r, _, fs in os.walk(path)
        for f in fs
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A straight 60-step tiny run: what every interrupted run must reach."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    train_lib.train(tiny_config(**{"training.num_steps": 60}), workdir)
    return workdir


def test_sigkill_while_a_checkpoint_is_committed_then_resume_is_exact(tmp_path, reference):
    workdir = str(tmp_path / "run")
    flags = [
        "--config.training.num_steps=60",
        "--config.eval.every=20",
        "--config.eval.max_examples=2048",
        "--config.sampling.num=100",
        "--config.sampling.steps=20",
        "--config.training.keep=2",
        "--config.optim.schedule=constant",
    ]
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tests", "fault_train.py"),
        "kill_at_commit:30",
        f"--config={ROOT}/configs/gmm2d.py",
        f"--workdir={workdir}",
        *TINY_FLAGS,
        *flags,
    ]
    r = subprocess.run(cmd, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    ckpt = os.path.join(workdir, "checkpoints")
    assert "30" not in os.listdir(ckpt) and any("tmp" in d for d in os.listdir(ckpt))  # killed mid-save
    done = train_script(workdir, *flags)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from step 20" in done.stdout
    assert not any("tmp" in d for d in os.listdir(ckpt))  # the torn save was cleaned up
    assert_same_params(params_at(workdir, 60)[1], params_at(reference, 60)[1])
    assert losses(workdir) == losses(reference)


def test_truncated_latest_checkpoint_is_set_aside_and_the_previous_one_used(tmp_path, reference):
    workdir = str(tmp_path / "run")
    train_lib.train(tiny_config(**{"training.num_steps": 40}), workdir)
    ckpt = os.path.join(workdir, "checkpoints")
    data_files = [
        os.path.join(r, f)
        for r, _, fs in os.walk(os.path.join(ckpt, "40", "state"))
        for f in fs
        if os.sep + "d" + os.sep in os.path.join(r, f)
    ]
    os.truncate(max(data_files, key=os.path.getsize), 10)
    # evaluate's "latest" skips it and says which step it used; it deletes nothing
    before = listing(ckpt)
    r = run_script("evaluate", f"--workdir={workdir}", "--noode", "--form=ism", "--max_examples=256")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step 40" in r.stdout and "skipping it" in r.stdout and "step 30 on gmm2d" in r.stdout
    assert listing(ckpt) == before
    # the trainer moves it aside with a warning naming it, resumes from step 30 and ends where a straight run does
    summary = train_lib.train(tiny_config(**{"training.num_steps": 60}), workdir)
    assert summary["step"] == 60 and os.path.isdir(os.path.join(ckpt, "40.unusable"))
    assert_same_params(params_at(workdir, 60)[1], params_at(reference, 60)[1])


def test_second_trainer_refuses_a_busy_workdir_and_a_dead_ones_lock_does_not_block(tmp_path):
    workdir = str(tmp_path / "run")
    first = start_training(workdir, "--config.training.num_steps=100000")
    start = time.time()
    second = train_script(workdir, "--config.training.num_steps=100000")
    assert_one_error_line(second, f"workdir {workdir} is in use by process {first.pid}")
    assert time.time() - start < 60
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = train_script(workdir, "--config.training.num_steps=30")
    assert third.returncode == 0 and "resumed from step" in third.stdout, third.stdout + third.stderr


def test_a_workdir_of_another_model_is_refused_before_anything_is_touched(tmp_path):
    workdir = str(tmp_path / "run")
    assert train_script(workdir, "--config.training.num_steps=20").returncode == 0
    before = listing(workdir)
    r = train_script(
        workdir, "--config.training.num_steps=40", "--config.model.hidden=64", "--config.model.activation=silu"
    )
    assert_one_error_line(
        r, "holds checkpoints of another experiment", "model.hidden: 32 -> 64", "model.activation: 'softplus' -> 'silu'"
    )
    assert listing(workdir) == before


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, reference):
    """A real full file system (a small tmpfs) where the machine allows mounting one, else an injected
    ENOSPC at the same write."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode
        == 0
    )
    try:
        workdir = str(mount / "run")
        real_save, calls = checkpoints.save, []

        def save(mngr, state, data_state, meta):
            calls.append(meta["step"])
            if meta["step"] == 30:  # fill the disk, then let orbax write into it
                if mounted:
                    with open(mount / "filler", "wb") as f, pytest.raises(OSError):
                        while True:
                            f.write(b"\0" * 65536)
                            f.flush()
                else:
                    raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return real_save(mngr, state, data_state, meta)

        monkeypatch.setattr(checkpoints, "save", save)
        with pytest.raises(StorageError, match=r"cannot write to .* at step 30.*the checkpoint at step 20 is intact"):
            train_lib.train(tiny_config(**{"training.num_steps": 60}), workdir)
        monkeypatch.setattr(checkpoints, "save", real_save)
        if mounted:
            os.remove(mount / "filler")
        for line in open(os.path.join(workdir, "metrics.jsonl")):
            json.loads(line)  # no torn line
        train_lib.train(tiny_config(**{"training.num_steps": 60}), workdir)
        assert_same_params(params_at(workdir, 60)[1], params_at(reference, 60)[1])
        assert losses(workdir) == losses(reference)
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)])


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("def get_config(:\n", "syntax error at line 1"),
        ("X = 1\n", "defines no get_config()"),
        ("def get_config():\n    return 3\n", "get_config() returned int, not an ml_collections.ConfigDict"),
        ("import nonexistent_module_xyz\n", "does not import: ModuleNotFoundError"),
    ],
)
def test_broken_config_files_give_one_line(tmp_path, content, fragment):
    path = tmp_path / "cfg.py"
    path.write_text(content)
    r = run_script("train", f"--config={path}", f"--workdir={tmp_path / 'run'}")
    assert_one_error_line(r, f"--config={path}", fragment)
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize(
    "flag, fragment",
    [
        ("--config.model.hiddn=3", "model.hiddn is not a config key (did you mean model.hidden?)"),
        ("--config.model.hidden=abc", "--config.model.hidden=abc"),
        ("--config.optim.lr=-1", "optim.lr=-1.0 must be a number > 0"),
        ("--config.training.keep=0", "training.keep=0 must be an integer >= 1"),
    ],
)
def test_bad_overrides_give_one_line_and_write_nothing(tmp_path, flag, fragment):
    r = train_script(str(tmp_path / "run"), flag)
    assert_one_error_line(r, fragment)
    assert not os.path.exists(tmp_path / "run")


def test_missing_config_file_and_missing_workdir_flag(tmp_path):
    assert_one_error_line(
        run_script("train", f"--config={tmp_path}/nope.py", f"--workdir={tmp_path}/w"), "no such file"
    )
    assert_one_error_line(run_script("train", f"--config={ROOT}/configs/gmm2d.py"), "--workdir")


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_one_of_two_processes_killed_stops_the_other_and_both_resume(tmp_path, victim):
    """SIGKILL to one process of a 2-process run (process 0 hosts jax's coordination service): the other
    exits 1 within the heartbeat with one line naming the checkpoint to resume from; restarting both resumes."""
    import socket

    def start(workdir, steps):
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        # as from a shell: without the TF_CPP_MIN_LOG_LEVEL that importing jax here put in os.environ
        return [
            train_script(
                workdir,
                f"--config.training.num_steps={steps}",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                env={"TF_CPP_MIN_LOG_LEVEL": None},
                wait=False,
            )
            for i in range(2)
        ]

    workdir = str(tmp_path / "run")
    procs = start(workdir, 100000)
    for line in procs[0].stdout:
        if "step 30/" in line:
            break
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait()
    other = procs[1 - victim]
    start_wait = time.time()
    out, _ = other.communicate(timeout=120)
    assert other.returncode == 1 and time.time() - start_wait < 60, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "another process of this 2-process run stopped" in errors[0], out
    assert "the checkpoint at step" in errors[0] and "restart every process" in errors[0], out
    assert not any(s in out for s in ("Traceback", "Fatal Python error", "Check failure")), out
    procs = start(workdir, 40)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "resumed from step" in outs[0]


def test_evaluation_while_training_reads_complete_checkpoints_and_leaves_the_run_alone(tmp_path, reference):
    workdir = str(tmp_path / "run")
    trainer = start_training(
        workdir, "--config.training.num_steps=100000", "--config.training.keep=2", until="step 20/"
    )
    steps = []
    for _ in range(3):  # the trainer saves (and deletes old) checkpoints every 10 steps meanwhile
        r = run_script("evaluate", f"--workdir={workdir}", "--noode", "--form=ism", "--max_examples=256", "--quiet")
        assert r.returncode == 0, r.stdout + r.stderr
        steps.append(
            json.load(
                open(
                    os.path.join(
                        workdir,
                        "eval",
                        sorted(os.listdir(os.path.join(workdir, "eval")), key=lambda f: int(f[:-5]))[-1],
                    )
                )
            )["step"]
        )
    trainer.send_signal(signal.SIGTERM)
    out, _ = trainer.communicate(timeout=120)
    assert trainer.returncode == 0, out
    assert steps == sorted(steps) and steps[0] >= 20, steps
    assert not any("warning" in line for line in out.splitlines())


@pytest.mark.parametrize("moment", ["after_listing", "between_exists_and_is_dir"])
def test_a_step_removed_while_it_is_listed_is_listed_again(tmp_path, monkeypatch, reference, moment):
    """What a trainer's cleanup does to a reader: the newest step's directory vanishes after orbax listed it (its
    metadata read then fails with FileNotFoundError), or between orbax's exists() and is_dir() of it
    (NotADirectoryError). restore_params lists again and uses the step before it."""
    import shutil

    import orbax.checkpoint as ocp
    from etils import epath

    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    victim, removed = os.path.join(workdir, "checkpoints", str(steps[-1])), []

    def remove_once():
        if not removed:
            removed.append(victim)
            shutil.rmtree(victim)

    if moment == "after_listing":
        cls, name = type(ocp.step.standard_name_format()), "find_all"
        real = cls.find_all

        def patched(self, base_path):
            found = list(real(self, base_path))
            remove_once()
            return iter(found)
    else:
        cls, name = type(epath.Path(victim)), "is_dir"
        real, real_exists, seen = cls.is_dir, cls.exists, []

        def exists(self):
            seen.append(os.fspath(self))
            return real_exists(self)

        def patched(self):
            if seen and seen[-1] == os.fspath(self) == victim:
                remove_once()
            return real(self)

        monkeypatch.setattr(cls, "exists", exists)

    monkeypatch.setattr(cls, name, patched)
    _, _, step, _ = checkpoints.restore_params(workdir)
    assert removed == [victim] and step == steps[-2]


def test_public_api_rejects_bad_data_by_name():
    import jax.numpy as jnp

    from diffvar.dequantization import to_model_space
    from diffvar.elbo import elbo
    from diffvar.objectives import get_objective
    from diffvar.ode import ode_logp
    from diffvar.sde import VPSDE

    sde, key = VPSDE(), jax.random.PRNGKey(0)
    score = lambda y, t: -y
    good = jnp.zeros((4, 2))
    assert elbo(score, sde, good, key).shape == (4,) and ode_logp(score, sde, good, key)[0].shape == (4,)
    bad = [
        (jnp.zeros((4,)), "at least one data dimension"),
        (jnp.zeros((0, 2)), "B >= 1"),
        (jnp.zeros((4, 2), jnp.int32), "floating-point"),
        ([[0.0, 1.0]], "must be an array"),
    ]
    for x, fragment in bad:
        for fn in (
            lambda x: elbo(score, sde, x, key),
            lambda x: ode_logp(score, sde, x, key),
            lambda x: get_objective("dsm_is", sde)(score, x, key),
        ):
            with pytest.raises(ValueError, match=fragment):
                fn(x)
            if fragment != "must be an array":  # the same checks under jit: they read shapes and dtypes only
                with pytest.raises(ValueError, match=fragment):
                    jax.jit(fn)(x)
    with pytest.raises(ValueError, match="score_fn must return an array of the input's shape"):
        elbo(lambda y, t: y[:, :1], sde, good, key)
    with pytest.raises(ValueError, match=r"transform='log' is not allowed; choose one of logit, scale"):
        to_model_space(key, jnp.zeros((2, 8, 8, 1)), 17, transform="log")
    with pytest.raises(ValueError, match=r"probe='normal' is not allowed"):
        get_objective("elbo", sde, probe="normal")


def test_sweep_runner_killed_mid_sweep_and_a_deleted_trial_workdir(tmp_path):
    """SIGKILL to the runner: its trials stop too (nothing keeps running unowned), and the same command
    resumes them from their checkpoints; a trial whose workdir was deleted is simply run again."""
    from diffvar.sweep import store
    from tests.test_sweep import FAKE_TRAINER, SWEEP, runs, write_config

    fake = tmp_path / "fake_trainer.py"
    fake.write_text(FAKE_TRAINER)
    cfg = write_config(tmp_path, 'None: h.sweep("seed", [0, 1, 2])')
    wd = tmp_path / "sweep"
    args = [
        *SWEEP,
        f"--config={cfg}",
        f"--workdir={wd}",
        "--config.sleep=6.0",
        "--config.num_steps=60",
        "--parallel=2",
        f"--trainer={sys.executable} {fake}",
        "--novalidate",
    ]
    runner = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    status = lambda s: store.read_json(wd / f"seed={s}" / "status.json") or {}
    deadline = time.time() + 30
    while time.time() < deadline and min(status(s).get("step", 0) for s in (0, 1)) < 2:
        time.sleep(0.1)
    pids = [status(s)["pid"] for s in (0, 1)]
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(
        os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z" for p in pids
    ):
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z" for p in pids)
    other_base = [a.replace("--config.sleep=6.0", "--config.sleep=0.5") for a in args]
    done = subprocess.run(other_base, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0 and "different command" in done.stderr  # a changed base is refused ...
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)  # ... the same one resumes
    assert done.returncode == 0, done.stdout + done.stderr
    for s in (0, 1):
        assert status(s)["status"] == "finished" and runs(wd, f"seed={s}")[-1]["start"] >= 2
    import shutil

    shutil.rmtree(wd / "seed=1")
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [len(runs(wd, f"seed={s}")) for s in (0, 1, 2)] == [2, 1, 1]
