"""How a sweep's trials run: one Executor interface, two implementations.

LocalExecutor runs each trial's trainer as a subprocess, `parallel` at once, each pinned to its own share of
the cores (and GPUs). SlurmExecutor submits one submitit job per trial; the job (TrialJob) runs the trainer
on the allocated nodes and, on preemption or timeout, has it checkpoint and requeues itself. Both record each
attempt in the trial's trial.json, and both retry a crash (max_retries) but not a deterministic failure.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import time

from diffvar import processes
from diffvar.errors import OptionError, check_number
from diffvar.sweep import store
from diffvar.sweep.runner import Trial


class Executor(abc.ABC):
    """Runs trials, each a (Trial, argv) pair, until they end or `stop` counts a signal, recording each
    attempt in the trial's trial.json (store.begin / store.end)."""

    name: str  # recorded in trial.json
    slots: int  # trials at once, for the ETA (Slurm: 1, where no ETA is shown)

    @abc.abstractmethod
    def run(self, jobs, stop, monitor):
        """Runs `jobs` ([(Trial, argv)]); `monitor.show(slots)` each poll, `monitor.out` for news,
        `monitor.finished(seconds)` for each trial that finished here (for the ETA)."""


@dataclasses.dataclass
class Attempt:
    """One run of a trial's trainer in a local slot; log_offset: train.log's size when it started."""

    trial: Trial
    argv: list
    proc: subprocess.Popen
    t0: float
    log_offset: int


@dataclasses.dataclass
class Pool:
    """A local run's state: the jobs waiting, the attempts running by slot, the attempts made per trial, and
    how many of the runner's signals were passed on to the trials."""

    queue: list
    running: dict = dataclasses.field(default_factory=dict)
    tries: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    forwarded: int = 0


class LocalExecutor(Executor):
    """Trials as subprocesses, `parallel` at once, each pinned to its own share of the cores (and GPUs: `gpus`,
    None for those detected); a crash goes back to the front of the queue up to max_retries times."""

    name = "local"

    def __init__(self, parallel=1, gpus=None, max_retries=2, poll_s=0.5):
        check_number("--parallel", parallel, minimum=1, integer=True, error=OptionError)
        check_number("--max_retries", max_retries, minimum=0, integer=True, error=OptionError)
        self.slots, self.gpus, self.max_retries, self.poll_s = parallel, gpus, max_retries, poll_s

    def run(self, jobs, stop, monitor):
        cpus = sorted(os.sched_getaffinity(0))
        slots = slots_for(self.slots, cpus, detect_gpus() if self.gpus is None else list(self.gpus))
        if self.slots > len(cpus):
            monitor.out(f"sweep: --parallel={self.slots} > {len(cpus)} cores: trials share cores")
        pool = Pool(list(jobs))
        try:
            while pool.running or (pool.queue and not stop.count):
                for i, slot in enumerate(slots):
                    if i not in pool.running and pool.queue and not stop.count:
                        trial, argv = pool.queue.pop(0)
                        pool.running[i] = self.start(trial, argv, slot, pool.tries[trial.name] + 1)
                time.sleep(self.poll_s)
                self.forward(pool, stop, monitor)
                if self.reap(pool, stop, monitor):
                    monitor.write()
                monitor.show(self.slots)
        finally:  # an error in the runner itself: the trials checkpoint and stop
            for attempt in pool.running.values():
                if attempt.proc.poll() is None:
                    attempt.proc.send_signal(signal.SIGTERM)
                    attempt.proc.wait()

    def start(self, trial, argv, slot, number):
        """Starts attempt `number` of `trial` in `slot`, its output appended to the trial's train.log."""
        log_path = os.path.join(trial.workdir, "train.log")
        offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        pinned = slot["cpus"] if self.slots > 1 else None
        with open(log_path, "ab") as log:
            log.write(f"=== sweep attempt {number}: {time.ctime()} ===\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=slot_env(slot, self.slots),
                preexec_fn=processes.preexec(signal.SIGTERM, pinned),
                start_new_session=True,
            )
        store.begin(trial.workdir, pid=proc.pid, cpus=slot["cpus"], gpus=slot["gpus"])
        return Attempt(trial, argv, proc, time.time(), offset)

    def forward(self, pool, stop, monitor):
        """The runner's first signal goes to the running trials as SIGTERM (they checkpoint); a second kills them."""
        if stop.count and not pool.forwarded:
            monitor.out(
                "sweep: stopping: SIGTERM to the running trials (they checkpoint); re-run the same command to resume"
            )
            for attempt in pool.running.values():
                attempt.proc.send_signal(signal.SIGTERM)
            pool.forwarded = 1
        if stop.count > 1 and pool.forwarded == 1 and pool.running:
            monitor.out("sweep: second signal: killing the running trials")
            for attempt in pool.running.values():
                attempt.proc.kill()
            pool.forwarded = 2

    def reap(self, pool, stop, monitor):
        """Records the attempts that ended; returns whether any did."""
        ended = [i for i, attempt in pool.running.items() if attempt.proc.poll() is not None]
        for i in ended:
            self.record(pool.running.pop(i), pool, stop, monitor)
        return bool(ended)

    def record(self, attempt, pool, stop, monitor):
        """Records an ended attempt in trial.json; a crash with retries left goes back to the queue's front."""
        trial, rc = attempt.trial, attempt.proc.returncode
        status, error, kind = store.outcome(trial.workdir, rc, attempt.log_offset, pool.forwarded > 0)
        pool.tries[trial.name] += 1
        retry = status == "crashed" and pool.tries[trial.name] <= self.max_retries and not stop.count
        final = "interrupted" if retry else ("failed" if status == "crashed" else status)
        store.end(trial.workdir, attempt.t0, status=final, returncode=rc, error=error, kind=kind)
        if status == "finished":
            monitor.finished(time.time() - attempt.t0)
        if status in ("failed", "crashed"):
            again = f"; retrying ({pool.tries[trial.name]}/{self.max_retries})" if retry else ""
            monitor.out(f"sweep: {trial.name} {status} [{kind}]: {error}{again}")
        if retry:
            pool.queue.insert(0, (trial, attempt.argv))


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
    return [str(i) for i, line in enumerate(row for row in out.splitlines() if row.startswith("GPU "))]


def slots_for(parallel, cpus, gpus):
    """`parallel` slots, each {"cpus": [...], "gpus": [...]}: the cores split into contiguous shares (shared
    round-robin when there are fewer cores than slots); GPUs likewise when there are several."""
    slots = []
    for i in range(parallel):
        if len(cpus) >= parallel:
            share = cpus[i * len(cpus) // parallel : (i + 1) * len(cpus) // parallel]
        else:
            share = [cpus[i % len(cpus)]]
        if len(gpus) >= parallel:
            gshare = gpus[i * len(gpus) // parallel : (i + 1) * len(gpus) // parallel]
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


# ----------------------------------------------------------------------------------------------
# Slurm, through submitit.


class SlurmExecutor(Executor):
    """One submitit job per trial, requeued from its checkpoint on preemption. params: submitit's parameters
    (timeout_min, slurm_partition, nodes, gpus_per_node, ...); "cluster": "local" runs the jobs as local
    processes, timeouts and requeues included (for tests)."""

    name = "slurm"

    def __init__(self, params=None, max_retries=2, poll_s=0.5):
        check_number("--max_retries", max_retries, minimum=0, integer=True, error=OptionError)
        self.params, self.max_retries, self.poll_s, self.slots = dict(params or {}), max_retries, poll_s, 1

    def run(self, jobs, stop, monitor):
        executor = self.submitit_executor(monitor.workdir)
        submitted = []
        for trial, argv in jobs:
            submitted.append(executor.submit(TrialJob(trial.workdir, argv, self.max_retries)))
            store.record(trial.workdir, job_id=str(submitted[-1].job_id), status="pending")
        monitor.out(f"sweep: submitted {len(submitted)} jobs ({', '.join(str(j.job_id) for j in submitted)})")
        while not stop.count and not all(j.done() for j in submitted):
            time.sleep(self.poll_s)
            monitor.show(self.slots)
        if stop.count:
            monitor.out("sweep: stopped waiting; the Slurm jobs go on. --report rebuilds the results at any time")

    def submitit_executor(self, workdir):
        """submitit's executor for this sweep, its logs in workdir/slurm."""
        try:
            import submitit
        except ImportError:
            raise OptionError("--executor=slurm needs submitit: pip install 'diffvar[slurm]'") from None
        params = dict(self.params)
        cluster = params.pop("cluster", "slurm")
        if cluster == "slurm" and not shutil.which("sbatch"):
            raise OptionError("--executor=slurm: no sbatch on PATH (not a Slurm login node)")
        params.setdefault("timeout_min", 24 * 60)
        if cluster == "local":  # max_num_timeout: how many timeouts a job is requeued after (submitit: 3)
            executor = submitit.LocalExecutor(os.path.join(workdir, "slurm"), params.pop("max_num_timeout", 3))
            params = {k: v for k, v in params.items() if k in LOCAL_PARAMS}
        else:
            executor = submitit.AutoExecutor(folder=os.path.join(workdir, "slurm"), cluster=cluster)
            params["name"] = f"sweep-{os.path.basename(workdir)}"
        executor.update_parameters(tasks_per_node=1, **params)
        return executor


LOCAL_PARAMS = ("timeout_min", "gpus_per_node", "visible_gpus", "nodes", "signal_delay_s", "setup")  # submitit's


class TrialJob:
    """One trial as a submitit job: runs the trainer (retrying crashes), records trial.json; on preemption
    or timeout (submitit's checkpoint) sends the trainer SIGTERM, waits for its checkpoint and requeues."""

    def __init__(self, trial_dir, argv, max_retries):
        self.trial_dir, self.argv, self.max_retries = trial_dir, list(argv), max_retries
        self.proc, self.t0 = None, time.time()

    def __call__(self):
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        log_path = os.path.join(self.trial_dir, "train.log" if rank == 0 else f"train.{rank}.log")
        self.forward_preemption()
        for attempt in range(self.max_retries + 1):
            status, kind = self.attempt(log_path, chief=rank == 0, last=attempt == self.max_retries)
            if kind != "crash":
                return status
        return "failed"

    def forward_preemption(self):
        """On submitit's preemption signal every rank's trainer gets SIGTERM (it checkpoints); submitit's own
        handler then requeues the job from rank 0."""
        usr2 = getattr(signal, os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
        previous = signal.getsignal(usr2)

        def forward(signum, frame):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            if callable(previous):
                previous(signum, frame)

        signal.signal(usr2, forward)

    def attempt(self, log_path, chief, last):
        """One run of the trainer; returns its (status, kind). Only rank 0 (the chief) records trial.json."""
        offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        t0 = self.t0 = time.time()
        if chief:
            job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
            store.begin(self.trial_dir, job_id=job_id)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv + distributed_flags(os.environ), stdout=log, stderr=subprocess.STDOUT
            )
            while self.proc.poll() is None:  # not wait(): the preemption handler must be able to wait
                time.sleep(0.2)
        status, error, kind = store.outcome(self.trial_dir, self.proc.returncode, offset)
        if status == "crashed":
            status = "failed" if last else "interrupted"
        if chief:
            store.end(self.trial_dir, t0, status=status, returncode=self.proc.returncode, error=error, kind=kind)
        return status, kind

    def checkpoint(self, *args, **kwargs):
        """submitit's preemption hook: checkpoint the trainer (SIGTERM, wait) and resubmit this job."""
        import submitit

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait()
        store.end(self.trial_dir, self.t0, status="interrupted", requeued=True)
        return submitit.helpers.DelayedSubmission(TrialJob(self.trial_dir, self.argv, self.max_retries))


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
    return [
        f"--coordinator_address={first_node(env['SLURM_JOB_NODELIST'])}:{port}",
        f"--num_processes={ntasks}",
        f"--process_id={int(env.get('SLURM_PROCID', '0'))}",
    ]
