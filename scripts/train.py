"""diffvar-train from a checkout: python scripts/train.py (or python -m diffvar.commands.train)."""

from diffvar.commands import train

__doc__ = train.__doc__  # what --help prints (absl reads __main__'s docstring): the command's own text

if __name__ == "__main__":
    train.start()
