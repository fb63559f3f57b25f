"""Signals and child processes (diffvar/processes.py): the one stop request, the one parent-death signal."""

import os
import signal
import subprocess
import sys
import textwrap
import threading

from diffvar import processes


def test_stop_counts_its_signals_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with processes.Stop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.count == 1
        assert signal.getsignal(signal.SIGINT) is before[1]  # SIGTERM only, unless asked
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with processes.Stop((signal.SIGTERM, signal.SIGINT)) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.count == 2  # the sweep runner kills its trials at the second
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_stop_outside_the_main_thread_installs_nothing():
    seen = []

    def body():
        with processes.Stop() as stop:
            seen.append((stop.requested, signal.getsignal(signal.SIGTERM)))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [(False, before)]


def test_a_child_dies_with_its_parent(tmp_path):
    """A parent starts a sleeping child with preexec(SIGTERM) and is killed: the child gets SIGTERM."""
    pid_file = tmp_path / "child.pid"
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        from diffvar import processes
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 preexec_fn=processes.preexec(15))
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent])
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            break
        threading.Event().wait(0.05)
    child = int(pid_file.read_text())
    proc.kill()
    proc.wait()
    for _ in range(200):  # the orphan is not our child: poll its state (gone, or a zombie nobody reaped)
        if not alive(child):
            break
        threading.Event().wait(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the child outlived its parent")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
