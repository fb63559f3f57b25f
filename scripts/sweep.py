"""diffvar-sweep from a checkout: python scripts/sweep.py (or python -m diffvar.commands.sweep)."""

from diffvar.commands import sweep

__doc__ = sweep.__doc__  # what --help prints (absl reads __main__'s docstring): the command's own text

if __name__ == "__main__":
    sweep.start()
