"""The trainer (diffvar.commands.train) with one fault injected at an exact moment, for tests/test_reliability.py.

    python tests/fault_train.py kill_at_commit:STEP [its flags ...]

kill_at_commit:STEP: SIGKILL this process when orbax has written every file of the checkpoint at STEP
into its temporary directory and is about to rename it into place (the last moment of a save).
"""

import os
import runpy
import signal
import sys

from orbax.checkpoint._src.path import async_path

fault, step = sys.argv[1].split(":")
assert fault == "kill_at_commit", fault
real_rename = async_path.rename


async def rename(src, dst):
    if os.path.basename(str(dst)) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    return await real_rename(src, dst)


async_path.rename = rename
sys.argv = [sys.argv[0]] + sys.argv[2:]
runpy.run_module("diffvar.commands.train", run_name="__main__", alter_sys=True)
