"""The sweep runner: every trial of a config's get_hyper sweep as its own trainer process, resumable.

    python scripts/sweep.py --config=configs/gmm2d.py --workdir=runs/sweep [--sweep=NAME] [--parallel=2]

run() is the program, top to bottom: load and check the sweep, plan (what is finished, what to run), run the
trials (locally with --parallel slots pinned to their own cores / GPUs, or as Slurm jobs through submitit),
and write the results. Each trial runs in DIR/<name from its overrides> with command.txt, trial.json (the
runner's record) and train.log (the trainer's output). The trainer reports through status.json; exit status
0 is finished or interrupted, 1 with an `error: ...` line a deterministic failure (not retried), anything
else a crash (retried up to max_retries times, then recorded failed with kind "crash").
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from diffvar import hyper, results
from diffvar.errors import ConfigError, OptionError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = (sys.executable, os.path.join(REPO, "scripts", "train.py"))


def parse_shard(shard):
    """'i/n' -> (i, n) with 0 <= i < n; None or '' -> None."""
    if not shard:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise OptionError(f"--shard={shard!r} must be i/n with 0 <= i < n, e.g. --shard=0/4")
    return int(m[1]), int(m[2])


def load_module(config_path):
    """The config file as a module (for its get_hyper)."""
    if not os.path.isfile(config_path):
        raise OptionError(f"--config={config_path}: no such file")
    spec = importlib.util.spec_from_file_location(f"_diffvar_sweep_config_{abs(hash(config_path))}", config_path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 -- a broken config file: one line, not a traceback
        raise ConfigError(f"{config_path}: {type(e).__name__}: {e}") from None
    return module


def detect_gpus():
    """GPU ids this process may use: $CUDA_VISIBLE_DEVICES, else those `nvidia-smi -L` lists, else []."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def slots_for(parallel, cpus, gpus):
    """`parallel` slots, each {"cpus": [...], "gpus": [...]}: the cores split into contiguous shares (shared
    round-robin when there are fewer cores than slots); GPUs likewise when there are several."""
    slots = []
    for i in range(parallel):
        if len(cpus) >= parallel:
            share = cpus[i * len(cpus) // parallel:(i + 1) * len(cpus) // parallel]
        else:
            share = [cpus[i % len(cpus)]]
        if len(gpus) >= parallel:
            gshare = gpus[i * len(gpus) // parallel:(i + 1) * len(gpus) // parallel]
        else:
            gshare = [gpus[i % len(gpus)]] if len(gpus) > 1 else []
        slots.append({"cpus": share, "gpus": gshare})
    return slots


def slot_env(slot, parallel):
    """Environment of a trial in `slot`: thread counts of its share of cores and its CUDA_VISIBLE_DEVICES."""
    env = dict(os.environ)
    if parallel > 1:
        n = str(len(slot["cpus"]))
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, DIFFVAR_SWEEP_CPUS=n)
        if slot["gpus"]:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(slot["gpus"])
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def _preexec(cpus):
    """In the child before exec: pin to `cpus` and get SIGTERM when the runner dies (Linux)."""
    def pin():
        if cpus:
            os.sched_setaffinity(0, cpus)
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    return pin


def first_node(nodelist):
    """The first host of a Slurm node list: "gpu[003-010,12],cpu1" -> "gpu003"."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    first = nodelist[:end]
    m = re.fullmatch(r"([^\[]*)\[([^\],-]+)[^\]]*\](.*)", first)
    return f"{m[1]}{m[2]}{m[3]}" if m else first


def distributed_flags(env):
    """The trainer's multi-host flags from Slurm's variables (none for a single task)."""
    ntasks = int(env.get("SLURM_NTASKS", "1") or 1)
    if ntasks <= 1:
        return []
    port = 20000 + int(re.sub(r"\D", "", env.get("SLURM_JOB_ID", "0")) or 0) % 20000
    return [f"--coordinator_address={first_node(env['SLURM_JOB_NODELIST'])}:{port}",
            f"--num_processes={ntasks}", f"--process_id={int(env.get('SLURM_PROCID', '0'))}"]


class TrialJob:
    """One trial as a submitit job: runs the trainer (retrying crashes), records trial.json; on preemption
    or timeout (submitit's checkpoint) sends the trainer SIGTERM, waits for its checkpoint and requeues."""

    def __init__(self, trial_dir, argv, max_retries):
        self.trial_dir, self.argv, self.max_retries = trial_dir, list(argv), max_retries
        self.proc, self.t0 = None, time.time()

    def __call__(self):
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        chief = rank == 0
        log_path = os.path.join(self.trial_dir, "train.log" if chief else f"train.{rank}.log")
        usr2 = getattr(signal, os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
        previous = signal.getsignal(usr2)

        def forward(signum, frame):  # every rank's trainer checkpoints; submitit then requeues from rank 0
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            if callable(previous):
                previous(signum, frame)
        signal.signal(usr2, forward)
        for attempt in range(self.max_retries + 1):
            offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
            t0 = self.t0 = time.time()
            if chief:
                results.begin(self.trial_dir, job_id=os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"))
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen(self.argv + distributed_flags(os.environ), stdout=log,
                                             stderr=subprocess.STDOUT)
                while self.proc.poll() is None:  # not wait(): the preemption handler must be able to wait
                    time.sleep(0.2)
                rc = self.proc.returncode
            status, error, kind = results.outcome(self.trial_dir, rc, offset)
            if status == "crashed":
                status = "failed" if attempt == self.max_retries else "interrupted"
            if chief:
                results.end(self.trial_dir, t0, status=status, returncode=rc, error=error, kind=kind)
            if kind != "crash":
                return status
        return "failed"

    def checkpoint(self, *args, **kwargs):
        """submitit's preemption hook: checkpoint the trainer (SIGTERM, wait) and resubmit this job."""
        import submitit
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait()
        results.end(self.trial_dir, self.t0, status="interrupted", requeued=True)
        return submitit.helpers.DelayedSubmission(TrialJob(self.trial_dir, self.argv, self.max_retries))


def run(config, config_path, workdir, sweep_name=None, base_overrides=None, parallel=1, shard=None,
        dry_run=False, report=False, executor="local", max_retries=2, retry_failed=False, trainer=TRAINER,
        check_config=None, gpus=None, slurm=None, poll_s=0.5, out=print):
    """Runs (or resumes, lists, reports) the sweep `sweep_name` of config file `config_path` in `workdir`.

    config: the base ConfigDict (the file's get_config() with base_overrides applied); base_overrides:
    {key: value} given on the command line, passed to every trial before the trial's own; trainer: the argv
    prefix of the trainer; check_config: optional callable validating each trial's full config; gpus: GPU
    ids (None: detected); slurm: submitit parameters for executor="slurm" ("cluster": "local" runs the jobs
    as local processes). Returns the result rows (dicts as results.read_trial)."""
    if report:
        if not os.path.exists(os.path.join(workdir, results.MANIFEST)):
            raise OptionError(f"--report: {workdir} holds no sweep (no {results.MANIFEST})")
        rows, _ = results.write(workdir)
        out(results.progress_line(rows, time.time(), parallel, []))
        out(f"wrote {os.path.join(workdir, 'results.md')}, results.csv, results.png")
        return rows
    if not isinstance(parallel, int) or parallel < 1:
        raise OptionError(f"--parallel={parallel!r} must be an integer >= 1")
    if executor not in ("local", "slurm"):
        raise OptionError(f"--executor={executor!r} is not allowed; choose one of local, slurm")
    if not isinstance(max_retries, int) or max_retries < 0:
        raise OptionError(f"--max_retries={max_retries!r} must be an integer >= 0")
    shard = parse_shard(shard) if not isinstance(shard, tuple) else shard
    source, config_path = config_path, os.path.abspath(config_path)
    workdir = os.path.abspath(workdir)
    base_overrides = {hyper.normalize_key(k): v for k, v in (base_overrides or {}).items()}

    # 1. The sweep, checked against the base config before anything runs.
    trials = hyper.load(load_module(config_path), config, sweep_name, source=source)
    for trial in trials if check_config else ():
        try:
            check_config(hyper.apply(config, trial))
        except Exception as e:  # noqa: BLE001 -- a checker that crashes on this config is also a config error
            what = str(e) if isinstance(e, ConfigError) else f"the config check failed: {type(e).__name__}: {e}"
            raise ConfigError(f"trial {hyper.trial_name(trial)}: {what}") from None
    plan = []
    for i, trial in enumerate(trials):
        name = hyper.trial_name(trial)
        args = [f"--config={config_path}", f"--workdir={os.path.join(workdir, name)}"]
        args += [f"--config.{k}={hyper.cli_value(v)}" for k, v in base_overrides.items() if k not in trial]
        args += [f"--config.{k}={hyper.cli_value(v)}" for k, v in trial.items()]
        plan.append({"index": i, "name": name, "overrides": trial, "args": args, "dir": os.path.join(workdir, name),
                     "overrides_text": {k: hyper.cli_value(v) for k, v in trial.items()}})
    if len({p["name"] for p in plan}) != len(plan):
        raise ConfigError("two trials map to the same directory name; make their values differ")
    mine = [p for p in plan if shard is None or p["index"] % shard[1] == shard[0]]

    # 2. Plan: the same trial must mean the same command; finished (and deterministic failures) are skipped.
    todo, skipped = [], []
    for p in mine:
        old = results.read_json(os.path.join(p["dir"], results.TRIAL_FILE))
        if old and old.get("args") and old["args"] != p["args"]:
            changed = sorted(set(old["args"]) ^ set(p["args"]))
            raise OptionError(f"{p['dir']} was run with a different command (differs in {' '.join(changed)}); "
                              "use a new --workdir for a different base config")
        state = results.read_trial(p["dir"], p["name"], p["overrides_text"])
        foreign = state["status"] == "running" and state["host"] != socket.gethostname()
        skip = state["status"] == "finished" or (state["status"] == "running" and not foreign)
        skip = skip or (state["status"] == "failed" and state["kind"] != "crash" and not retry_failed)
        skip = skip or (foreign and not retry_failed)
        (skipped if skip else todo).append((p, state))
    where = f" (shard {shard[0]}/{shard[1]}: {len(mine)} of {len(plan)})" if shard else ""
    why = ", ".join(f"{n} {s}" for s, n in results.counts([s for _, s in skipped]).items() if n)
    out(f"sweep {sweep_name or '(default)'} of {source}: {len(plan)} trials{where}, {len(todo)} to run"
        + (f", {len(skipped)} skipped ({why})" if skipped else ""))
    for p, state in sorted(todo + skipped, key=lambda ps: ps[0]["index"]):
        action = "run" if any(p is q for q, _ in todo) else f"skip ({state['status']})"
        out(f"  [{p['index']}] {p['dir']}: {action}")
        if dry_run:
            out(f"      {shlex.join([*trainer, *p['args']])}")
    if dry_run:
        return []

    os.makedirs(workdir, exist_ok=True)
    results.write_manifest(workdir, {"config": config_path, "sweep": sweep_name, "base_overrides":
                                     {k: hyper.cli_value(v) for k, v in base_overrides.items()},
                                     "trials": [{"name": p["name"], "overrides_text": p["overrides_text"]}
                                                for p in plan]})
    for p, _ in todo:
        os.makedirs(p["dir"], exist_ok=True)
        argv = [*trainer, *p["args"]]
        with results.atomic_path(os.path.join(p["dir"], "command.txt")) as tmp, open(tmp, "w") as f:
            f.write(shlex.join(argv) + "\n")
        prior = results.read_json(os.path.join(p["dir"], results.TRIAL_FILE)) or {}
        results.record(p["dir"], name=p["name"], overrides_text=p["overrides_text"], args=p["args"], argv=argv,
               status=prior.get("status", "pending") if prior.get("status") != "running" else "interrupted",
               executor=executor)
    t_start, durations, running = time.time(), [], {}
    stop, shown, names = {"signals": 0}, {"line": "", "t": 0.0}, {p["name"] for p in mine}

    def show(slots):  # the progress line of this runner's trials, when the counts change or each minute
        line = results.progress_line([r for r in results.collect(workdir)[0] if r["name"] in names], t_start, slots,
                             durations)
        if line.split(" | ")[0] != shown["line"].split(" | ")[0] or time.time() - shown["t"] > 60:
            out(line)
            shown.update(line=line, t=time.time())

    def handler(signum, frame):  # only counts: the loop below acts (printing here could re-enter stdout)
        stop["signals"] += 1
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    try:
        # 3a. Slurm: one submitit job per trial (requeued from its checkpoint on preemption).
        if executor == "slurm" and todo:
            try:
                import submitit
            except ImportError:
                raise OptionError("--executor=slurm needs submitit: pip install 'diffvar[slurm]'") from None
            params = dict(slurm or {})
            cluster = params.pop("cluster", "slurm")
            if cluster == "slurm" and not shutil.which("sbatch"):
                raise OptionError("--executor=slurm: no sbatch on PATH (not a Slurm login node)")
            params.setdefault("timeout_min", 24 * 60)
            if cluster == "local":  # the jobs as local processes, timeouts and requeues included (tests)
                ex = submitit.LocalExecutor(os.path.join(workdir, "slurm"))
                local = {"timeout_min", "gpus_per_node", "visible_gpus", "nodes", "signal_delay_s", "setup"}
                params = {k: v for k, v in params.items() if k in local}
            else:
                ex = submitit.AutoExecutor(folder=os.path.join(workdir, "slurm"), cluster=cluster)
                params["name"] = f"sweep-{os.path.basename(workdir)}"
            ex.update_parameters(tasks_per_node=1, **params)
            jobs = []
            for p, _ in todo:
                jobs.append(ex.submit(TrialJob(p["dir"], [*trainer, *p["args"]], max_retries)))
                results.record(p["dir"], job_id=str(jobs[-1].job_id), status="pending")
            out(f"sweep: submitted {len(jobs)} jobs ({', '.join(str(j.job_id) for j in jobs)})")
            while not stop["signals"] and not all(j.done() for j in jobs):
                time.sleep(poll_s)
                show(len(jobs))
            if stop["signals"]:
                out("sweep: stopped waiting; the Slurm jobs go on. --report rebuilds the results at any time")

        # 3b. Local: `parallel` slots, each pinned to its own cores (and GPUs); crashes retried.
        elif todo:
            cpus = sorted(os.sched_getaffinity(0))
            slots = slots_for(parallel, cpus, detect_gpus() if gpus is None else list(gpus))
            if parallel > len(cpus):
                out(f"sweep: --parallel={parallel} > {len(cpus)} cores: trials share cores")
            queue = [p for p, _ in todo]
            tries = {p["name"]: 0 for p in queue}
            signalled = killed = False  # running: slot -> (plan entry, Popen, start time, log offset)
            while running or (queue and not stop["signals"]):
                for i in range(parallel):
                    if i in running or not queue or stop["signals"]:
                        continue
                    p = queue.pop(0)
                    log_path = os.path.join(p["dir"], "train.log")
                    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
                    with open(log_path, "ab") as log:
                        log.write(f"=== sweep attempt {tries[p['name']] + 1}: {time.ctime()} ===\n".encode())
                        log.flush()
                        proc = subprocess.Popen([*trainer, *p["args"]], stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=slot_env(slots[i], parallel),
                                                preexec_fn=_preexec(slots[i]["cpus"] if parallel > 1 else None),
                                                start_new_session=True)
                    results.begin(p["dir"], pid=proc.pid, cpus=slots[i]["cpus"], gpus=slots[i]["gpus"])
                    running[i] = (p, proc, time.time(), offset)
                time.sleep(poll_s)
                if stop["signals"] and not signalled:
                    out("sweep: stopping: SIGTERM to the running trials (they checkpoint); re-run the same "
                        "command to resume")
                    for _, proc, _, _ in running.values():
                        proc.send_signal(signal.SIGTERM)
                    signalled = True
                if stop["signals"] > 1 and running and not killed:
                    out("sweep: second signal: killing the running trials")
                    killed = True
                    for _, proc, _, _ in running.values():
                        proc.kill()
                changed = False
                for i, (p, proc, t0, offset) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    del running[i]
                    status, error, kind = results.outcome(p["dir"], rc, offset, signalled)
                    tries[p["name"]] += 1
                    retry = status == "crashed" and tries[p["name"]] <= max_retries and not stop["signals"]
                    final = "interrupted" if retry else ("failed" if status == "crashed" else status)
                    results.end(p["dir"], t0, status=final, returncode=rc, error=error, kind=kind)
                    if status == "finished":
                        durations.append(time.time() - t0)
                    if status in ("failed", "crashed"):
                        again = f"; retrying ({tries[p['name']]}/{max_retries})" if retry else ""
                        out(f"sweep: {p['name']} {status} [{kind}]: {error}{again}")
                    if retry:
                        queue.insert(0, p)
                    changed = True
                if changed:
                    results.write(workdir)
                show(parallel)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for p, proc, _, _ in running.values():
            if proc.poll() is None:  # an error in the runner itself: the trials checkpoint and stop
                proc.send_signal(signal.SIGTERM)
                proc.wait()

    rows, _ = results.write(workdir)
    show(parallel)
    out(f"wrote {os.path.join(workdir, 'results.md')}, results.csv, results.png")
    return rows
