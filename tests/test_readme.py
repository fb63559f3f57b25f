"""Every command in README.md's shell blocks runs, as printed, with tiny settings.

The README's notation: `[...]` an optional part (the test keeps it: every flag printed is run), `a|b` alternative
values (the test takes the last: `latest`, `truncated_normal`), a trailing `...` more of the same (dropped),
upper-case placeholders (N, K, DIR) filled in below. Paths are moved into a temporary folder (runs/ under it,
scripts/ and configs/ from the repository). After the printed flags the test appends or replaces only flags that
shrink the work (fewer steps, examples and samples; a sweep is a --dry_run); a command renamed, or a flag that no
longer exists or is refused, fails. `make train` and `make test` are not run here: they are the suite itself and a
4,000-step run (the Makefile holds their commands).
"""

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tests.test_datasets import write_cifar10

README = os.path.join(ROOT, "README.md")
PROGRAMS = ("train", "evaluate", "sample", "plot", "sweep", "prepare_data")  # every script the README must show

# Appended to a script's command (later flags win in absl): the digits U-Net at two channels, two steps.
APPEND = {
    "train": (
        "--config.model.ch=8",
        "--config.model.ch_mult=(1,)",
        "--config.model.num_res_blocks=1",
        "--config.model.attn_resolutions=()",
        "--config.training.num_steps=2",
        "--config.training.ckpt_every=2",
        "--config.training.log_every=1",
        "--config.optim.warmup_steps=1",
        "--config.eval.every=0",
        "--config.eval.max_examples=8",
        "--config.eval.final_repeats=1",
        "--config.sampling.num=4",
        "--config.sampling.steps=5",
    ),
    "evaluate": ("--max_examples=4", "--batch_size=4", "--ode_rtol=1e-2", "--ode_atol=1e-2", "--quiet"),
    "sweep": ("--dry_run",),
    "prepare_data": ("--unverified",),  # the synthetic archive is not the official file
}
# Printed flags whose value the test replaces by a smaller one (only where the command prints them).
REPLACE = {"--steps": "5", "--repeats": "2", "--num": "4"}
# Placeholders by flag: N the trained step, K importance samples, DIR a folder or the source archive.
PLACEHOLDERS = {("--checkpoint_step", "N"): "2", ("--importance_samples", "K"): "2"}


def shell_blocks(text):
    """The lines of README's ```bash blocks, continuation lines joined and comments dropped."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        joined = re.sub(r"\s*\\\n\s*", " ", block)
        commands += [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]
    return [c for c in commands if c and not c.startswith("#")]


def concrete(command):
    """README notation -> one runnable argument list (see the module docstring); None for `make ...`."""
    words = shlex.split(command.replace("[", " ").replace("]", " "))
    if words[0] == "make":
        return None
    args = []
    for word in words:
        if word == "...":
            continue
        flag, eq, value = word.partition("=")
        if eq:
            value = PLACEHOLDERS.get((flag, value), value.split("|")[-1])
            word = f"{flag}={value}"
        args.append(word)
    return args


def readme_commands():
    """[(program, argument list)] in README order; the program is scripts/<program>.py's name."""
    out = []
    for command in shell_blocks(open(README, encoding="utf-8").read()):
        args = concrete(command)
        if args is None:
            continue
        assert args[0] == ".venv/bin/python" and args[1].startswith("scripts/"), command
        out.append((os.path.basename(args[1])[:-3], args))
    return out


COMMANDS = readme_commands()


def test_readme_shows_every_program():
    assert [p for p in PROGRAMS if p not in {name for name, _ in COMMANDS}] == []


def runnable(name, args, tmp):
    """The README's arguments with paths moved under `tmp`, placeholders filled and the work made tiny."""
    run = [sys.executable, os.path.join(ROOT, args[1])]
    for word in args[2:]:
        flag, _, value = word.partition("=")
        if flag in REPLACE:
            value = REPLACE[flag]
        elif value.startswith(("configs/", "scripts/")):
            value = os.path.join(ROOT, value)
        elif value.startswith("runs/"):
            value = os.path.join(tmp, value)
        elif value == "DIR":
            value = {"--source": os.path.join(tmp, "cifar-10-binary.tar.gz"), "--data_dir": os.path.join(tmp, "tfds")}[
                flag
            ]
        run.append(f"{flag}={value}" if value else flag)
    extra = APPEND.get(name, ())
    if name == "sample" and "--ode" in args:
        extra += ("--rtol=1e-2", "--atol=1e-2")
    return run + list(extra)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    write_cifar10(d / "cifar-10-binary.tar.gz", seed=0)
    return str(d)


@pytest.fixture(scope="module")
def ran(tmp):
    """Runs the README's commands in order (train first: the others read its workdir); {index: CompletedProcess}.
    A command after a failed one still runs: each test reports its own."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", DIFFVAR_DATA_DIR=os.path.join(tmp, "tfds"))
    return {
        i: subprocess.run(runnable(name, args, tmp), cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
        for i, (name, args) in enumerate(COMMANDS)
    }


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[" ".join(a[1:]) for _, a in COMMANDS])
def test_readme_command_runs(index, ran, tmp):
    name, args = COMMANDS[index]
    r = ran[index]
    assert r.returncode == 0, f"{' '.join(r.args)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr
    if name == "plot":
        assert os.path.isfile(os.path.join(tmp, "runs", "digits", "curves.png"))


def test_the_readme_notation_is_parsed_as_documented():
    args = concrete(
        ".venv/bin/python scripts/evaluate.py --workdir=runs/digits [--checkpoint_step=N|best|latest] "
        "[--dequantization=uniform|truncated_normal --importance_samples=K] [--config.optim.lr=1e-3 ...]"
    )
    assert args == [
        ".venv/bin/python",
        "scripts/evaluate.py",
        "--workdir=runs/digits",
        "--checkpoint_step=latest",
        "--dequantization=truncated_normal",
        "--importance_samples=2",
        "--config.optim.lr=1e-3",
    ]
    assert concrete("make train WORKDIR=runs/x") is None
    text = "```bash\n.venv/bin/python scripts/a.py --x=1 \\\n    --y=2   # comment\n# only a comment\n```\n"
    assert shell_blocks(text) == [".venv/bin/python scripts/a.py --x=1 --y=2"]
