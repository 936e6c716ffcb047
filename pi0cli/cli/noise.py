"""Third-party chatter the CLI silences unless ``pi0 -v``/``--verbose``: the SVT-AV1 encoder's banner and
thread-priority warnings, FFmpeg's muxer lines (``[mp4 @ 0x...]``), and the ``datasets`` library's ``Map:``
progress bars, all printed while LeRobot writes a dataset, and absl's warnings (orbax's notes on every
checkpoint read). Errors still come through.

Environment switches are read by those libraries when they start (an encoder, an import), so they are set
before any command runs; FFmpeg's level goes through PyAV, imported only for commands that touch video.
"""

from __future__ import annotations

import os

#: Set to ``1`` by ``--verbose`` so library code can tell (e.g. to keep a warning it would otherwise filter).
VERBOSE_ENV = "PI0_VERBOSE"
#: Commands that encode or decode video through PyAV.
VIDEO_COMMANDS = frozenset({"record", "eval", "convert", "train", "norm-stats", "doctor"})


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")


def quiet_third_party(command: str | None, *, verbose_output: bool = False) -> None:
    """Silence the chatter described in the module docstring (``verbose_output``: leave everything on)."""
    if verbose_output:
        os.environ[VERBOSE_ENV] = "1"
        return
    if verbose():
        return
    import logging
    import warnings

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # LeRobot re-enables the bars after its own quiet sections; with the variable set, datasets warns instead.
    warnings.filterwarnings("ignore", message="Cannot enable progress bars", category=UserWarning)
    # orbax logs through absl, e.g. "Metadata file does not exist" for every checkpoint it reads.
    logging.getLogger("absl").setLevel(logging.ERROR)
    if command in VIDEO_COMMANDS:
        quiet_ffmpeg()


def quiet_ffmpeg() -> None:
    """FFmpeg logs errors only (its default also prints information lines straight to stderr)."""
    try:
        import av
    except ImportError:  # nothing to quiet
        return
    # LeRobot restores FFmpeg's default callback after each video it writes; that callback obeys the libav level.
    av.logging.set_libav_level(av.logging.ERROR)
    av.logging.set_level(av.logging.ERROR)
