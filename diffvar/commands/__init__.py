"""The command-line programs of the installed package, each `python -m diffvar.commands.<name>` or its console
script (pyproject.toml's [project.scripts]); scripts/<name>.py runs the same program from a source tree.

    diffvar-train --config=configs/digits.py --workdir=runs/digits    # train.py
    diffvar-sweep --config=configs/gmm2d.py --workdir=runs/sweep      # sweep.py

Each module defines its absl flags and a main(); start() runs it through cli.run.
"""
