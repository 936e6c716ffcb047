"""pi0-FAST's decoding rules and which one is the default: decided here, once, for the library and the CLI.

- ``strict``: the reference's rule. A chunk whose tokens do not give exactly ``horizon x action_dim`` DCT
  coefficients fails, and zeros (in normalised units) are executed instead.
- ``lenient``: a wrong count is cut or zero-filled at the highest frequencies.
- ``constrained``: only tokens that keep the output a well-formed chunk may be chosen while decoding
  (:mod:`pi0cli.models.fast_grammar`), so every chunk decodes.

This module imports nothing heavy, so the CLI can name the default in its help.
"""

from __future__ import annotations

from typing import Literal

FastDecode = Literal["strict", "lenient", "constrained"]
FAST_DECODE_RULES: tuple[FastDecode, ...] = ("strict", "lenient", "constrained")
#: The rule used where none is asked for: ``constrained``. On the same trained checkpoint and the same 20 unseen
#: scenes it was the only rule that succeeded (docs/benchmarks.md, "pi0-FAST against pi0"), no chunk of it fails
#: by construction, and it costs per decode step what free decoding does. ``strict`` stays one flag away for
#: reproducing the reference token for token.
DEFAULT_FAST_DECODE: FastDecode = "constrained"
