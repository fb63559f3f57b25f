"""What every entry point shares: the multi-host flags, one way out for errors a user can fix, and the
workarounds that belong to a program rather than to the library.

    cli.define_multihost_flags()
    cli.run(main)          # absl app.run; any DiffvarError -> one `error: ...` line on stderr, exit status 1

A multi-process run (--num_processes > 1) runs its program in a child process that the started one waits
for: when another process of the run stops, jax's distributed runtime ends the survivors from C++ (SIGABRT)
within distributed.HEARTBEAT_SECONDS, and the waiting parent turns that into the one `error:` line.
"""

from __future__ import annotations

import faulthandler
import json
import logging as std_logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from diffvar import platform, processes
from diffvar.errors import DiffvarError, OptionError

ERRORS_FD = "DIFFVAR_ERRORS_FD"  # set in a multi-process run's child: the pipe its `error:` line goes to
_parent_pipe = os.environ.pop(ERRORS_FD, None)  # taken out of the environment: no grandchild inherits it
_cpp_log_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")  # the user's, read before jax sets its default


def define_multihost_flags():
    """--coordinator_address, --num_processes, --process_id: one process per host (jax.distributed)."""
    flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0 (jax.distributed).")
    flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
    flags.DEFINE_integer("process_id", 0, "Multi-host: this process's index.")


def initialize(model: str | None, batch_sizes: Sequence[int] = ()) -> None:
    """The platform's settings for `model` (config model.name, or None) run with `batch_sizes` (see
    platform.setup), then joins the multi-host run the flags describe (nothing to do without
    --coordinator_address). Before anything else uses jax."""
    platform.setup(model, batch_sizes)
    from diffvar import distributed

    f = flags.FLAGS
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)


def model_of(workdir):
    """model.name in workdir/config.json, or None when it cannot be read (the program reports that later)."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            return json.load(f)["model"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fail(message):
    """One `error: ...` line on stderr (in a multi-process run's child: to its parent, which prints it) and
    exit status 1."""
    sys.stdout.flush()
    sys.stderr.flush()
    # one write: no other thread's output inside the line
    os.write(2 if _parent_pipe is None else int(_parent_pipe), f"error: {message}\n".encode())
    sys.exit(1)


def _parse_flags(argv):
    """absl's flag parsing, with every error as one `error:` line: the --config file and the keys of its
    --config.* overrides are checked first (diffvar.config), then absl parses (wrong value types)."""
    from diffvar import config_files

    try:
        paths = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
        if paths and "config" in flags.FLAGS:
            base = config_files.load_file(paths[-1])
            for arg in argv[1:]:
                if arg.startswith("--config.") or arg.startswith("--noconfig."):
                    key = arg.split("=", 1)[0].removeprefix("--no").removeprefix("--").removeprefix("config.")
                    config_files.check_key(base, key, arg)
        return flags.FLAGS(argv)
    except DiffvarError as e:
        fail(e)
    except flags.Error as e:
        fail(" ".join(str(e).split()))


def _run_child():
    """Runs this program again in a child and waits for it: SIGTERM is passed on, the child's `error:` line
    printed as it comes, its exit status returned; a child ended by a signal (jax's distributed runtime
    aborts a process whose peer stopped) is reported as one `error:` line and exit status 1."""
    read, write = os.pipe()
    # jaxlib's C++ log is a page at such an abort (the user's TF_CPP_MIN_LOG_LEVEL wins): the line says it all
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=_cpp_log_level or "4", **{ERRORS_FD: str(write)})
    # killing the started process kills the child too (SIGKILL at the parent's death), as if there were one
    child = subprocess.Popen(
        [sys.executable, *sys.orig_argv[1:]], env=env, pass_fds=(write,), preexec_fn=processes.preexec(signal.SIGKILL)
    )
    os.close(write)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child itself (same process group)
    reported = False
    while chunk := os.read(read, 4096):  # until the child exits
        os.write(2, chunk)
        reported = True
    status = child.wait()
    if status >= 0:
        return status
    if not reported:
        fail(_ended_by(-status))
    return 1


def _ended_by(signum):
    """The line for a multi-process run's child ended by signal `signum`."""
    f = flags.FLAGS
    if signum == signal.SIGABRT:
        what = (
            f"another process of this {f.num_processes}-process run stopped (jax's distributed runtime "
            f"ended process {f.process_id})"
        )
    else:
        what = (
            f"process {f.process_id} of this {f.num_processes}-process run was killed by {signal.Signals(signum).name}"
        )
    step = _latest_checkpoint(f.workdir) if "workdir" in f else None
    if step is None:
        return f"{what}: restart every process"
    return f"{what}; the checkpoint at step {step} is intact: restart every process to resume from it"


def _latest_checkpoint(workdir):
    """The latest committed checkpoint step of a training workdir (orbax's step directories), or None."""
    from diffvar import checkpoints

    try:
        return max((int(d) for d in os.listdir(checkpoints.directory(workdir)) if d.isdigit()), default=None)
    except OSError:
        return None


def _from_orbax(tb) -> bool:
    """Whether a traceback passes through orbax's or asyncio's frames."""
    while tb is not None:
        if "/orbax/" in tb.tb_frame.f_code.co_filename or "/asyncio/" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


class _NotFromOrbax(std_logging.Filter):
    def filter(self, record):
        return not (record.exc_info and _from_orbax(record.exc_info[2]))


def quiet_orbax_abandoned_reads() -> None:
    """Drops, for this program, Python's reports of orbax's abandoned reads: a checkpoint that cannot be read
    is reported as one CheckpointError line, but orbax awaits its reads with asyncio.gather, which leaves the
    other reads running when one fails (python/cpython#75633, by design); when they are garbage-collected
    Python prints a page for each ("Exception ignored in: <coroutine _read_array_index_and_device_put>", or
    "Task exception was never retrieved" through asyncio's logger), after the error line, at random. Still
    so with orbax-checkpoint 0.12 (1 of 7 runs on a truncated checkpoint). Only reports raised from orbax's
    and asyncio's frames are dropped (sys.unraisablehook, threading.excepthook, a filter on asyncio's
    logger); remove this when orbax cancels the reads it abandons."""
    if getattr(sys.unraisablehook, "diffvar_quiet", False):
        return
    unraisable_hook, thread_hook = sys.unraisablehook, threading.excepthook

    def quiet_unraisable(u):
        if not _from_orbax(u.exc_traceback):
            unraisable_hook(u)

    def quiet_thread(args):
        if not _from_orbax(args.exc_traceback):
            thread_hook(args)

    quiet_unraisable.diffvar_quiet = True
    sys.unraisablehook, threading.excepthook = quiet_unraisable, quiet_thread
    std_logging.getLogger("asyncio").addFilter(_NotFromOrbax())


def run(main: Callable[[], None]) -> None:
    """absl's app.run(main) with INFO logs off, positional arguments refused, and every DiffvarError turned
    into one `error: ...` line and exit status 1 (other exceptions keep their traceback: they are bugs). With
    --num_processes > 1, main runs in a child (see the module docstring)."""

    def wrapped(argv):
        try:
            if len(argv) > 1:
                raise OptionError(f"unexpected arguments {argv[1:]}")
            if "num_processes" in flags.FLAGS and flags.FLAGS.num_processes > 1:
                if _parent_pipe is None:
                    return _run_child()
                # A peer that stops fails every collective in flight: not news, the parent's line says it all.
                faulthandler.disable()  # absl's: it prints every thread's stack at jaxlib's abort
                logging.set_verbosity(logging.FATAL)  # orbax's save threads log each failed collective
            main()
        except DiffvarError as e:
            fail(e)
        except Exception:
            if "jax" in sys.modules:
                from diffvar import distributed

                distributed.stop_if_peer_lost()
            raise

    logging.set_verbosity(logging.ERROR)  # orbax's and absl's INFO/WARNING lines are not news
    quiet_orbax_abandoned_reads()
    app.run(wrapped, flags_parser=_parse_flags)
