"""The ``pi0`` command line: parsing, rich output and error mapping only; the work happens in the library.

Importing this package must stay cheap (no JAX, no torch): shell completion runs it on every TAB.
"""

from pi0cli.cli.app import app, main

__all__ = ["app", "main"]
