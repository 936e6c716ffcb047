"""Errors pi0 raises on purpose.

Every message names the bad value and says how to fix it; the CLI prints it as one red line and exits 1.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class Pi0Error(Exception):
    """Base class of every error pi0 raises on purpose (bad input, bad files, bad plugins)."""


class UnknownNameError(Pi0Error, KeyError):
    """A name (embodiment, preset, ...) that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        self.kind, self.name, self.known = kind, name, known
        message = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if close:
            message += f"; did you mean {close[0]!r}?"
        elif known:
            message += f"; known: {', '.join(known)}"
        else:
            message += f"; no {kind} is registered (is a plugin installed and enabled?)"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class PluginError(Pi0Error):
    """A plugin failed to load or registered something invalid."""


class ConversionError(Pi0Error):
    """A source (raw recording or checkpoint) that cannot be converted; the message names the file and key."""


class ContractError(Pi0Error, ValueError):
    """An Embodiment declaration that contradicts itself (dims, masks, cameras)."""


class ObservationError(Pi0Error, ValueError):
    """An observation that does not match the embodiment's contract."""


class NormStatsError(Pi0Error, ValueError):
    """A norm_stats.json that is missing, malformed or does not fit the data."""


def read_json(file: Path, error: type[Pi0Error], fix: str = "") -> Any:
    """``file``'s JSON; undecodable text raises ``error`` naming the file (and ``fix``, a hint after ``;``)."""
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{file} is not valid JSON ({exc})" + (f"; {fix}" if fix else "")) from None
