"""The sweep runner (diffvar/sweep/runner.py, executors.py, store.py; diffvar.commands.sweep) with a fake
trainer, and one real gmm2d sweep run by the installed package's entry points. The tables and the plot:
test_sweep_results.py.

The fake trainer follows the trainer's contract: status.json (running / finished / interrupted / failed with
a kind), metrics.jsonl, exit 0 on finish or SIGTERM, exit 1 with one `error: ...` line for a user error,
resume from its own checkpoint file. Its config keys choose what it does (mode, sleep, num_steps).
"""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from diffvar import config_files, sweep
from diffvar.errors import ConfigError, OptionError
from diffvar.sweep import declarations, executors, store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = (sys.executable, "-m", "diffvar.commands.sweep")  # what scripts/sweep.py runs

FAKE_TRAINER = r"""
import json, os, signal, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
workdir = args["--workdir"]
cfg = {k[len("--config."):]: v for k, v in args.items() if k.startswith("--config.")}
mode, sleep, num_steps = cfg.get("mode", "ok"), float(cfg.get("sleep", "0")), int(cfg.get("num_steps", "4"))
os.makedirs(workdir, exist_ok=True)

def write(name, obj):
    tmp = os.path.join(workdir, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, os.path.join(workdir, name))

def status(s, step, **kw):
    if mode != "legacy":
        rec = dict(status=s, step=step, num_steps=num_steps, pid=os.getpid(), error=None, kind=None, result=None)
        rec.update(kw)
        write("status.json", rec)

ckpt = os.path.join(workdir, "ckpt.json")
start = json.load(open(ckpt))["step"] if os.path.exists(ckpt) else 0
with open(os.path.join(workdir, "runs.jsonl"), "a") as f:
    f.write(json.dumps({"start": start, "cpus": sorted(os.sched_getaffinity(0)), "argv": sys.argv[1:],
                        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "omp": os.environ.get("OMP_NUM_THREADS"),
                        "t": time.time()}) + "\n")
if mode == "fail":  # a bad value: caught before anything is written
    print("error: lr=%s cannot work; choose lr < 1" % cfg.get("lr"), file=sys.stderr)
    sys.exit(1)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
status("running", start)
for step in range(start + 1, num_steps + 1):
    time.sleep(sleep / num_steps)
    write("ckpt.json", {"step": step})
    status("running", step)
    if mode == "crash":
        raise RuntimeError("boom at step %d" % step)
    if mode == "crash_once" and not os.path.exists(os.path.join(workdir, "crashed")):
        open(os.path.join(workdir, "crashed"), "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "nonfinite":
        msg = "non-finite loss at step %d; try a lower optim.lr" % step
        status("failed", step, error=msg, kind="non_finite")
        print("error: " + msg, file=sys.stderr)
        sys.exit(1)
    if stop:
        status("interrupted", step)
        sys.exit(0)
metric = 1.0 + float(cfg.get("lr", "0.1")) + 0.01 * int(cfg.get("seed", "0"))
with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": num_steps, "loss": 0.5}) + "\n")
    f.write(json.dumps({"step": num_steps, "test_nats": metric, "test_nats_stderr": 0.01}) + "\n")
status("finished", num_steps, result={"test_nats": metric, "test_nats_stderr": 0.01})
print("done")
"""

CONFIG = """
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.lr = 0.1
    c.mode = "ok"
    c.sleep = 0.0
    c.num_steps = 4
    c.shape = (1, 2)
    return c


def get_hyper(h, name=None):
    return h.named(name, {SWEEPS})
"""


def write_config(tmp_path, sweeps, filename="fake_config.py"):
    """A config file with the fake trainer's keys and get_hyper returning h.named(name, {sweeps})."""
    path = tmp_path / filename
    path.write_text(CONFIG.replace("SWEEPS", sweeps))
    return str(path)


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake_trainer.py"
    path.write_text(FAKE_TRAINER)
    return [sys.executable, str(path)]


def run(
    config_path,
    workdir,
    fake,
    base=None,
    sweep_name=None,
    check_config=None,
    report=False,
    dry_run=False,
    shard=None,
    retry_failed=False,
    executor="local",
    slurm=None,
    **kw,
):
    """sweep.run (or sweep.report) in this process with the fake trainer; returns (rows, printed lines).
    kw: the LocalExecutor's parallel, gpus, max_retries (or the SlurmExecutor's max_retries)."""
    lines = []
    if report:
        return sweep.report(str(workdir), out=lines.append), lines
    if executor == "slurm":
        executor = sweep.SlurmExecutor(slurm, poll_s=0.05, **kw)
    else:
        executor = sweep.LocalExecutor(poll_s=0.05, **kw)
    config = declarations.apply(config_files.load_file(config_path), base or {})
    declared = sweep.load(
        config, config_path, str(workdir), name=sweep_name, base=base, check_config=check_config, trainer=fake
    )
    rows = sweep.run(
        declared, executor, shard=sweep.parse_shard(shard), retry_failed=retry_failed, dry_run=dry_run, out=lines.append
    )
    return rows, lines


def runs(workdir, name):
    path = os.path.join(workdir, name, "runs.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def read_csv(workdir):
    with open(os.path.join(workdir, "results.csv")) as f:
        return list(csv.DictReader(f))


def cli(*args, timeout=60, cwd=REPO):
    return subprocess.run([*SWEEP, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_runs_resumes_and_adds_only_new_trials(tmp_path, fake):
    cfg = write_config(tmp_path, 'None: h.product([h.sweep("lr", [0.3, 0.1]), h.sweep("seed", [0, 1])])')
    wd = tmp_path / "sweep"
    rows, lines = run(cfg, wd, fake, base={"num_steps": 3}, parallel=2)
    assert [r["status"] for r in rows] == ["finished"] * 4
    table = read_csv(wd)
    assert [float(r["test_nats"]) for r in table] == sorted(float(r["test_nats"]) for r in table)  # sorted
    assert table[0]["lr"] == "0.1" and table[0]["seed"] == "0" and table[0]["step"] == "3"
    assert float(table[0]["test_nats_stderr"]) == 0.01 and float(table[0]["wall_s"]) > 0
    name = "lr=0.3,seed=1"
    assert open(wd / name / "command.txt").read().split()[2:] == [
        f"--config={cfg}",
        f"--workdir={wd / name}",
        "--config.num_steps=3",
        "--config.lr=0.3",
        "--config.seed=1",
    ]
    assert any(line.startswith("sweep: 4/4 finished, 0 running, 0 failed, 0 left") for line in lines)
    for f in ("results.csv", "results.md", "results.png", "sweep.json"):
        assert (wd / f).exists()

    rows, lines = run(cfg, wd, fake, base={"num_steps": 3})  # the same command again: nothing reruns
    assert all(len(runs(wd, r["name"])) == 1 for r in rows)
    assert "0 to run, 4 skipped (4 finished)" in lines[0]

    cfg = write_config(tmp_path, 'None: h.product([h.sweep("lr", [0.3, 0.1, 0.2]), h.sweep("seed", [0, 1])])')
    rows, lines = run(cfg, wd, fake, base={"num_steps": 3})
    assert "2 to run, 4 skipped" in lines[0]
    assert sorted(r["name"] for r in rows if len(runs(wd, r["name"])) == 1) == sorted(r["name"] for r in rows)
    assert len(read_csv(wd)) == 6

    with pytest.raises(OptionError, match="was run with a different command.*--config.num_steps=3"):
        run(cfg, wd, fake, base={"num_steps": 5})  # a different base is a different sweep


def test_failures_are_recorded_and_crashes_retried(tmp_path, fake):
    cfg = write_config(tmp_path, 'None: h.chainit([h.sweep("mode", ["ok", "fail", "nonfinite", "crash"])])')
    wd = tmp_path / "sweep"
    rows, lines = run(cfg, wd, fake, base={"lr": 2.0}, max_retries=1)
    by = {r["overrides"]["mode"]: r for r in rows}
    assert by["ok"]["status"] == "finished" and by["ok"]["metric"] == pytest.approx(3.0)
    assert (by["fail"]["status"], by["fail"]["kind"]) == ("failed", "error")
    assert by["fail"]["error"] == "lr=2.0 cannot work; choose lr < 1"
    assert (by["nonfinite"]["kind"], by["nonfinite"]["error"]) == (
        "non_finite",
        "non-finite loss at step 1; try a lower optim.lr",
    )
    assert (by["crash"]["status"], by["crash"]["kind"]) == ("failed", "crash")
    assert "exit status 1: RuntimeError: boom at step" in by["crash"]["error"]
    assert [len(runs(wd, f"mode={m}")) for m in ("ok", "fail", "nonfinite", "crash")] == [1, 1, 1, 2]
    md = open(wd / "results.md").read()
    assert "non_finite: non-finite loss" in md and "crash: exit status 1" in md
    assert any("retrying (1/1)" in line for line in lines)

    run(cfg, wd, fake, base={"lr": 2.0}, max_retries=0)  # a crash is re-run; deterministic failures are not
    assert [len(runs(wd, f"mode={m}")) for m in ("ok", "fail", "nonfinite", "crash")] == [1, 1, 1, 3]
    run(cfg, wd, fake, base={"lr": 2.0}, max_retries=0, retry_failed=True)
    assert [len(runs(wd, f"mode={m}")) for m in ("ok", "fail", "nonfinite", "crash")] == [1, 2, 2, 4]


def test_killed_trial_resumes_from_its_checkpoint(tmp_path, fake):
    cfg = write_config(tmp_path, 'None: h.sweep("mode", ["ok", "crash_once"])')
    wd = tmp_path / "sweep"
    rows, _ = run(cfg, wd, fake)  # SIGKILL mid-way: retried in the same run, resuming at step 1
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert [r["start"] for r in runs(wd, "mode=crash_once")] == [0, 1]
    assert store.read_json(wd / "mode=crash_once" / "trial.json")["attempts"] == 2

    wd = tmp_path / "again"  # with no retries: recorded as a crash ...
    rows, _ = run(cfg, wd, fake, max_retries=0)
    assert {r["name"]: r["status"] for r in rows} == {"mode=ok": "finished", "mode=crash_once": "failed"}
    assert "killed by SIGKILL" in rows[1]["error"] and rows[1]["kind"] == "crash"
    rows, _ = run(cfg, wd, fake, max_retries=0)  # ... and the re-run resumes it; the finished one is not rerun
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert [r["start"] for r in runs(wd, "mode=crash_once")][-1] == 1 and len(runs(wd, "mode=ok")) == 1

    # A runner killed outright leaves "running" with dead processes: the next run treats it as interrupted.
    store.record(str(wd / "mode=ok"), status="running", runner_pid=2**22 + 12345)
    os.remove(wd / "mode=ok" / "status.json")
    assert store.read_trial(str(wd / "mode=ok"))["status"] == "interrupted"


def test_sigterm_reaches_trials_and_the_rerun_resumes(tmp_path, fake):
    cfg = write_config(tmp_path, 'None: h.sweep("seed", [0, 1])')
    wd = tmp_path / "sweep"
    args = [
        f"--config={cfg}",
        f"--workdir={wd}",
        "--config.sleep=6.0",
        "--config.num_steps=60",
        "--parallel=2",
        f"--trainer={' '.join(fake)}",
        "--novalidate",
    ]
    proc = subprocess.Popen([*SWEEP, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    deadline = time.time() + 30
    while time.time() < deadline:
        steps = [(store.read_json(wd / f"seed={s}" / "status.json") or {}).get("step", 0) for s in (0, 1)]
        if min(steps) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "stopping: SIGTERM to the running trials" in out and "Traceback" not in out
    table = read_csv(wd)
    assert [r["status"] for r in table] == ["interrupted", "interrupted"]
    for s in (0, 1):
        assert store.read_json(wd / f"seed={s}" / "status.json")["status"] == "interrupted"
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert [r["status"] for r in read_csv(wd)] == ["finished", "finished"]
    for s in (0, 1):
        starts = [r["start"] for r in runs(wd, f"seed={s}")]
        assert len(starts) == 2 and starts[1] >= 2  # resumed from the checkpoint, not from scratch


def test_shards_partition_the_trials(tmp_path, fake):
    cfg = write_config(tmp_path, 'None: h.sweep("seed", list(range(7)))')
    wd = tmp_path / "sweep"
    for i in range(3):
        rows, lines = run(cfg, wd, fake, shard=f"{i}/3")
        assert f"(shard {i}/3: {len(range(i, 7, 3))} of 7)" in lines[0]
    assert sorted(len(runs(wd, f"seed={s}")) for s in range(7)) == [1] * 7  # each exactly once
    assert [r["status"] for r in rows] == ["finished"] * 7  # any shard's results show the whole sweep
    rows, _ = run(cfg, tmp_path / "other", fake, shard="1/3")
    assert sorted(r["name"] for r in rows if r["status"] == "finished") == ["seed=1", "seed=4"]
    assert store.counts(rows)["pending"] == 5
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(OptionError, match="must be i/n with 0 <= i < n"):
            run(cfg, tmp_path / "bad", fake, shard=bad)


def test_parallel_slots_pin_cores_and_gpus(tmp_path, fake):
    assert executors.slots_for(2, [0, 1, 2, 3], []) == [{"cpus": [0, 1], "gpus": []}, {"cpus": [2, 3], "gpus": []}]
    assert executors.slots_for(3, [0, 1], ["0", "1"])[2] == {"cpus": [0], "gpus": ["0"]}
    assert executors.slots_for(2, [0, 1, 2], ["0", "1", "2", "3"])[1] == {"cpus": [1, 2], "gpus": ["2", "3"]}
    assert executors.slots_for(2, [0, 1], ["0"])[0]["gpus"] == []  # one GPU: not split
    cfg = write_config(tmp_path, 'None: h.sweep("seed", [0, 1, 2, 3])')
    wd = tmp_path / "sweep"
    run(cfg, wd, fake, base={"sleep": 0.4}, parallel=2, gpus=["0", "1"])
    cores = sorted(os.sched_getaffinity(0))
    recs = [runs(wd, f"seed={s}")[0] for s in range(4)]
    shares = [cores[: len(cores) // 2], cores[len(cores) // 2 :]]
    for rec in recs:
        assert rec["cpus"] in shares and rec["cuda"] == str(shares.index(rec["cpus"]))
        assert rec["omp"] == str(len(rec["cpus"]))
    assert {tuple(r["cpus"]) for r in recs} == {tuple(s) for s in shares}  # both slots used
    with pytest.raises(OptionError, match="--parallel=0 must be an integer >= 1"):
        run(cfg, wd, fake, parallel=0)


def test_report_tables_seeds_and_plot(tmp_path, fake):
    cfg = write_config(tmp_path, 'None: h.product([h.sweep("lr", [0.5, 0.1]), h.sweep("seed", [0, 1, 2])])')
    wd = tmp_path / "sweep"
    run(cfg, wd, fake)
    for f in ("results.csv", "results.md", "results.png", "results_seeds.csv"):
        os.remove(wd / f)
    rows, lines = run(cfg, wd, fake, report=True)  # rebuilt from the trial workdirs
    assert lines[0].startswith("sweep: 6/6 finished")
    table = read_csv(wd)
    assert [(r["lr"], r["seed"]) for r in table] == [
        ("0.1", "0"),
        ("0.1", "1"),
        ("0.1", "2"),
        ("0.5", "0"),
        ("0.5", "1"),
        ("0.5", "2"),
    ]
    md = open(wd / "results.md").read()
    assert "## Mean ± std over seeds" in md
    assert "| 0.1 | 1.1100 ± 0.0100 | 3/3 |" in md and "| 0.5 | 1.5100 ± 0.0100 | 3/3 |" in md
    seeds = list(csv.DictReader(open(wd / "results_seeds.csv")))
    assert [s["lr"] for s in seeds] == ["0.1", "0.5"] and float(seeds[0]["test_nats_std"]) == pytest.approx(0.01)
    assert open(wd / "results.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"  # what it shows: test_sweep_results

    store.record(str(wd / "lr=0.5,seed=2"), status="running", runner_pid=os.getpid(), host=os.uname()[1])
    os.remove(wd / "lr=0.5,seed=2" / "status.json")
    rows, lines = run(cfg, wd, fake, report=True)  # while a trial runs
    assert "5/6 finished, 1 running" in lines[0]
    assert read_csv(wd)[-1]["status"] == "running"


def test_results_fall_back_to_metrics_jsonl(tmp_path, fake):
    cfg = write_config(tmp_path, 'None: h.sweep("mode", ["legacy"])')  # a trainer writing no status.json
    rows, _ = run(cfg, tmp_path / "sweep", fake)
    assert rows[0]["status"] == "finished" and rows[0]["metric"] == pytest.approx(1.1) and rows[0]["step"] == 4


def test_checks_before_anything_runs(tmp_path, fake):
    wd = tmp_path / "sweep"

    def lr_below_one(config):
        if config.lr >= 1:
            raise ConfigError(f"lr={config.lr} must be < 1")

    cfg = write_config(tmp_path, 'None: h.sweep("lr", [0.1, 2])')
    with pytest.raises(ConfigError, match=r"^trial lr=2: lr=2.0 must be < 1"):
        run(cfg, wd, fake, check_config=lr_below_one)
    cfg = write_config(tmp_path, 'None: h.sweep("lrr", [0.1])')
    with pytest.raises(ConfigError, match="unknown config key 'lrr'"):
        run(cfg, wd, fake)
    cfg = write_config(tmp_path, 'None: h.sweep("shape", [[1, 2]])')
    with pytest.raises(ConfigError, match="shape takes a tuple"):
        run(cfg, wd, fake)
    assert not wd.exists()
    cfg = write_config(tmp_path, 'None: h.sweep("shape", [(1, 2, 3)]), "seeds": h.sweep("seed", [5])')
    rows, lines = run(cfg, wd, fake, dry_run=True)
    assert rows == [] and not wd.exists()
    assert "shape=1-2-3-" in lines[1] and "'--config.shape=(1, 2, 3)'" in lines[2]
    rows, _ = run(cfg, wd, fake, sweep_name="seeds")
    assert rows[0]["status"] == "finished" and rows[0]["name"] == "seed=5"


def test_cli_errors_are_one_line(tmp_path, fake):
    cfg = write_config(tmp_path, 'None: h.sweep("seed", [0, 1])')
    bare = tmp_path / "bare.py"
    bare.write_text("import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict({'seed': 0})\n")
    bad_key = write_config(tmp_path, 'None: h.sweep("optim.lr", [0.1])', "bad_key.py")
    wd = str(tmp_path / "sweep")
    cases = [
        ([f"--config={cfg}", f"--workdir={wd}", "--shard=2/2"], "--shard='2/2' must be i/n"),
        ([f"--config={cfg}", f"--workdir={wd}", "--parallel=0"], "--parallel=0 must be an integer >= 1"),
        ([f"--config={cfg}", f"--workdir={wd}", "--sweep=nope"], "unknown sweep 'nope'"),
        ([f"--config={bad_key}", f"--workdir={wd}"], "unknown config key 'optim.lr'"),
        ([f"--config={bare}", f"--workdir={wd}"], "declares no sweep"),
        ([f"--config={cfg}", f"--workdir={wd}", "--executor=pbs"], "--executor='pbs' is not allowed"),
        ([f"--workdir={wd}", "--report"], "holds no sweep (no sweep.json)"),
        ([f"--config={cfg}", f"--workdir={wd}", "--config.lrr=1"], "lrr is not a config key (did you mean lr?)"),
        ([f"--config={cfg}", f"--workdir={wd}", "--config.seed=x"], "flag --config.seed=x: invalid literal"),
    ]
    for args, message in cases:
        res = cli(*args, "--novalidate", f"--trainer={' '.join(fake)}")
        assert res.returncode == 1, res.stderr
        assert res.stderr.strip().splitlines() == [res.stderr.strip()] and res.stderr.startswith("error: ")
        assert message in res.stderr and "Traceback" not in res.stderr
    assert not os.path.exists(wd)


def test_slurm_helpers():
    assert executors.first_node("gpu[003-010,12],cpu1") == "gpu003"
    assert executors.first_node("node7,node8") == "node7" and executors.first_node("solo") == "solo"
    assert executors.first_node("rack[2-3]-n") == "rack2-n"
    env = {"SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_JOB_NODELIST": "gpu[011-014]", "SLURM_JOB_ID": "123"}
    assert executors.distributed_flags(env) == [
        "--coordinator_address=gpu011:20123",
        "--num_processes=4",
        "--process_id=2",
    ]
    assert executors.distributed_flags({"SLURM_NTASKS": "1"}) == [] and executors.distributed_flags({}) == []


def test_slurm_executor_through_submitit_local(tmp_path, fake):
    pytest.importorskip("submitit", reason="submitit (the optional `slurm` extra) is not installed")
    cfg = write_config(tmp_path, 'None: h.sweep("mode", ["ok", "fail"])')
    wd = tmp_path / "sweep"
    # Jobs time out after 8 s (USR2 3 s before, time for the trial's checkpoint even on a loaded machine): the
    # trial (6 s of work) checkpoints, is requeued and resumes until done, after up to 30 timeouts.
    rows, lines = run(
        cfg,
        wd,
        fake,
        base={"sleep": 6.0, "num_steps": 40},
        executor="slurm",
        slurm={"cluster": "local", "timeout_min": 8 / 60, "signal_delay_s": 3, "max_num_timeout": 30},
    )
    assert any(line.startswith("sweep: submitted 2 jobs") for line in lines)
    assert {r["name"]: r["status"] for r in rows} == {"mode=ok": "finished", "mode=fail": "failed"}
    starts = [r["start"] for r in runs(wd, "mode=ok")]
    assert len(starts) >= 2 and starts[0] == 0 and all(b > a for a, b in zip(starts, starts[1:])), starts
    record = store.read_json(wd / "mode=ok" / "trial.json")
    assert record["job_id"] and record["requeued"] and record["attempts"] == len(starts)
    assert store.read_json(wd / "mode=fail" / "trial.json")["error"].startswith("lr=None cannot work")
    assert len(read_csv(wd)) == 2


def test_trials_run_the_installed_trainer():
    """No path into a source tree: the trainer is the package's module, run by this python."""
    assert (sys.executable, "-m", "diffvar.commands.train") == sweep.TRAINER


@pytest.mark.slow
def test_real_gmm2d_sweep_end_to_end(tmp_path):
    """Two trials of configs/gmm2d.py's default sweep (shard 0/2) through the package's sweep and trainer
    (python -m diffvar.commands.*), started outside the source tree."""
    wd = tmp_path / "sweep"
    tiny = [
        "--config.model.hidden=16",
        "--config.training.num_steps=20",
        "--config.training.steps_per_call=10",
        "--config.training.log_every=10",
        "--config.training.ckpt_every=10",
        "--config.eval.every=0",
        "--config.eval.batch_size=256",
        "--config.eval.max_examples=256",
        "--config.eval.repeats=1",
        "--config.sampling.num=16",
        "--config.sampling.steps=5",
        "--config.optim.warmup_steps=0",
    ]
    res = cli(
        f"--config={REPO}/configs/gmm2d.py",
        f"--workdir={wd}",
        "--shard=0/2",
        "--parallel=2",
        *tiny,
        timeout=400,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = read_csv(wd)
    done = [r for r in table if r["status"] == "finished"]
    assert len(done) == 2, table
    assert {r["objective.name"] for r in done} == {"dsm_is", "dsm_lw"}
    assert all(math.isfinite(float(r["test_nats"])) and float(r["test_nats_stderr"]) > 0 for r in done)
    assert (wd / "results.png").exists() and (wd / "objective.name=dsm_is,seed=0" / "command.txt").exists()
