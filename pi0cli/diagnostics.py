"""What ``pi0 doctor`` reports, as a contract: a :class:`Row` of its table and the :class:`DoctorCheck` a plugin
adds through the ``pi0_doctor_checks`` hook. Imports nothing of pi0: the plugin registry and the doctor both
build on it (the checks themselves are in :mod:`pi0cli.doctor`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

Status = Literal["ok", "warn", "fail", "info"]


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the doctor's table."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def blocking(self) -> bool:
        return self.status == "fail"


@dataclasses.dataclass(frozen=True)
class DoctorCheck:
    """A check a plugin adds to ``pi0 doctor`` (hook ``pi0_doctor_checks``): ``run()`` returns its rows. A check
    that raises becomes one warning row naming the plugin, not a doctor crash."""

    name: str
    run: Callable[[], list[Row]]
