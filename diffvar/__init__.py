"""diffvar: diffusion models trained and evaluated as likelihood models."""

__version__ = "0.1.0"
