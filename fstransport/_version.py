"""fstransport's version: the one place it is written (pyproject.toml reads it from here), so
that ``fstransport --version`` answers without asking the installed metadata (~35 ms)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
