"""The ``fstransport`` command: ``demo``, ``ship``, ``serve``, ``bench`` and ``cleanup``.

One module per command (``ship``, ``serve``, ``cleanup``, ``bench``, ``demo``), the shared
argument types in ``args``, the top parser and the exit codes in ``main``.
"""

from fstransport.cli.args import TOKEN_ENV
from fstransport.cli.errors import UsageError
from fstransport.cli.main import main

__all__ = ["TOKEN_ENV", "UsageError", "main"]
