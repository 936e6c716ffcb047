"""The ``DatasetConverter`` contract: raw robot recordings into a LeRobot dataset, offered by a plugin.

A plugin registers converters through ``pi0_register_dataset_converters``; each becomes the command
``pi0 convert dataset NAME SRC --out DIR [--overwrite] [its options]``. The converter's function validates its
whole source before writing anything and writes through :class:`pi0cli.data.writer.DatasetWriter`, so a
failed or interrupted conversion never leaves a partial dataset behind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pi0cli.errors import ConversionError

#: ``progress(frames_done, frames_total)``, called after each written frame.
Progress = Callable[[int, int], None]
OptionValue = float | int | str | bool | None


@dataclasses.dataclass(frozen=True)
class ConverterOption:
    """A command-line option of a converter: ``--fps 50`` is ``ConverterOption("fps", float, 50.0, ...)``.

    ``name`` is the keyword passed to the converter function (its flag is ``--name`` with ``-`` for ``_``);
    ``type`` one of ``float``, ``int``, ``str`` (a ``bool`` option is an on/off ``--name/--no-name`` switch);
    ``minimum`` bounds a number from below.
    """

    name: str
    type: type[float] | type[int] | type[str] | type[bool]
    default: OptionValue
    help: str
    minimum: float | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"converter option {self.name!r} must be a Python identifier")
        if self.name in ("src", "out", "overwrite", "progress"):
            raise ValueError(f"converter option {self.name!r} clashes with an option every converter has")
        if self.type not in (float, int, str, bool):
            raise ValueError(f"converter option {self.name!r}: type must be float, int, str or bool")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class DatasetConverter:
    """Raw recordings of one robot into a LeRobot dataset for the embodiment ``embodiment``.

    ``name`` is the command name (``aloha-hdf5``); ``summary`` its one-line help; ``source_help`` says what
    ``SRC`` must be. ``convert(src: Path, out: Path, *, overwrite: bool, progress: Progress, **options)`` gets
    one keyword per :class:`ConverterOption` (its default where the user gave none), writes the dataset and
    returns its root; bad input raises :class:`~pi0cli.errors.ConversionError` naming the file and the key.
    ``examples`` are the example invocations its ``--help`` shows (the converter's own: the core names none).
    """

    name: str
    embodiment: str
    summary: str
    source_help: str
    convert: Callable[..., Path]
    options: tuple[ConverterOption, ...] = ()
    examples: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ValueError(f"dataset converter name {self.name!r} must be letters, digits, '-' or '_'")
        names = [option.name for option in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset converter {self.name!r} declares an option twice: {names}")


def write_episodes(out: str | Path, episodes: Iterable[tuple[str, Iterable[Mapping[str, Any]]]], *, total: int,
                   fps: float, features: Mapping[str, dict], robot_type: str, overwrite: bool,
                   progress: Progress | None = None) -> Path:
    """Write ``(task, frames)`` episodes through one :class:`~pi0cli.data.writer.DatasetWriter` (nothing is
    left behind on failure), calling ``progress(done, total)`` after each frame; returns the dataset root."""
    from pi0cli.data.writer import DatasetWriter

    done = 0
    with DatasetWriter(Path(out), fps=fps, features=features, robot_type=robot_type, overwrite=overwrite,
                       keep_on_interrupt=False) as writer:
        for task, frames in episodes:
            for frame in frames:
                writer.add_frame(frame, task)
                done += 1
                if progress is not None:
                    progress(done, total)
            writer.save_episode()
    return Path(out)


__all__ = ["ConversionError", "ConverterOption", "DatasetConverter", "OptionValue", "Progress", "write_episodes"]
