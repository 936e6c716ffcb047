"""The PaliGemma prompt tokenizer (sentencepiece), in the reference's pi0 and pi0.5 prompt formats.

pi0:   ``BOS + tokens(cleaned text) + tokens("\\n")``
pi0.5: ``BOS + tokens("Task: {cleaned text}, State: {bins};\\nAction: ")`` where ``bins`` are the 256-bin
       discretised (normalised, unpadded) state joined with spaces.

``cleaned text`` = the prompt stripped, with ``_`` and newlines turned into spaces (no lower-casing).
Token ids are right-padded with 0 (mask False) or truncated (with a :class:`PromptTruncatedWarning`) to
``max_len``.

The model file is found, in order: an explicit path (a file, or a directory holding
``paligemma_tokenizer.model``), ``$PI0_TOKENIZER``, the pi0 cache (``$PI0_CACHE_DIR`` or
``~/.cache/pi0``), the reference's cache (``$OPENPI_DATA_HOME`` or ``~/.cache/openpi``, under ``big_vision/``);
failing that it is downloaded from the reference location into the pi0 cache, unless offline
(``HF_HUB_OFFLINE``/``PI0_OFFLINE``), in which case one error names every place looked at.

No JAX here: the data pipeline and the CLI use this module.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pi0cli.errors import Pi0Error

TOKENIZER_FILENAME = "paligemma_tokenizer.model"
#: Where the reference fetches the tokenizer (``gs://big_vision/paligemma_tokenizer.model``) over HTTPS.
TOKENIZER_URL = "https://storage.googleapis.com/big_vision/paligemma_tokenizer.model"
#: Number of bins of the discretised state in pi0.5 prompts.
STATE_BINS = 256


class TokenizerError(Pi0Error):
    """The tokenizer model cannot be found, fetched or read."""


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than ``max_token_len`` and was cut."""


def clean_text(text: str) -> str:
    """The reference prompt cleaning: strip, ``_`` and ``\\n`` become spaces (case kept)."""
    return text.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Normalised state -> bin ids: ``digitize(s, linspace(-1, 1, 257)[:-1]) - 1`` (values below -1 give -1)."""
    bins = np.linspace(-1.0, 1.0, STATE_BINS + 1)[:-1]
    return np.digitize(np.asarray(state, dtype=np.float64), bins) - 1


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "PI0_OFFLINE"))


def cache_dir() -> Path:
    """The pi0 download cache (``$PI0_CACHE_DIR`` or ``~/.cache/pi0``)."""
    return Path(os.environ.get("PI0_CACHE_DIR") or Path.home() / ".cache" / "pi0")


def candidate_paths(path: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every place a tokenizer model is looked for, in order."""
    def as_file(p: Path) -> Path:
        return p / TOKENIZER_FILENAME if p.is_dir() or p.suffix != ".model" else p

    if path is not None:
        return [as_file(Path(path).expanduser())]
    found: list[Path] = []
    if os.environ.get("PI0_TOKENIZER"):
        found.append(as_file(Path(os.environ["PI0_TOKENIZER"]).expanduser()))
    found.append(cache_dir() / TOKENIZER_FILENAME)
    openpi = Path(os.environ.get("OPENPI_DATA_HOME") or Path.home() / ".cache" / "openpi")
    found.append(openpi / "big_vision" / TOKENIZER_FILENAME)
    return found


def find_tokenizer_model(path: str | os.PathLike[str] | None = None, *, download: bool = True) -> Path:
    """The tokenizer model file (see the module docstring for the search order)."""
    candidates = candidate_paths(path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    if path is not None:
        raise TokenizerError(f"no tokenizer model at {looked}; pass the path of a sentencepiece .model file")
    if not download or _offline():
        raise TokenizerError(
            f"PaliGemma tokenizer not found (looked in {looked}) and offline; copy paligemma_tokenizer.model "
            f"there or pass --tokenizer PATH (it is at {TOKENIZER_URL})"
        )
    return _download(cache_dir() / TOKENIZER_FILENAME, looked)


def _download(target: Path, looked: str) -> Path:
    import urllib.error
    import urllib.request

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(TOKENIZER_URL, timeout=30) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise TokenizerError(
            f"PaliGemma tokenizer not found (looked in {looked}) and downloading {TOKENIZER_URL} failed ({exc}); "
            "copy the file there or pass --tokenizer PATH"
        ) from None
    return target


class PaligemmaTokenizer:
    """Prompts -> ``(tokens int32 [max_len], mask bool [max_len])`` in the reference formats.

    Picklable (the model travels as its serialised bytes), so data-loader worker processes can use it.
    """

    def __init__(self, max_len: int = 48, model: str | os.PathLike[str] | bytes | None = None):
        if max_len <= 0:
            raise TokenizerError(f"max_len must be positive, got {max_len}")
        self.max_len = int(max_len)
        if isinstance(model, bytes):
            proto = model
        else:
            file = find_tokenizer_model(model)
            proto = file.read_bytes()
        self._proto = proto
        self._sp = self._load(proto)

    @staticmethod
    def _load(proto: bytes):
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(proto)
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError for bad files
            raise TokenizerError(f"not a sentencepiece model ({exc}); pass the PaliGemma tokenizer .model file") from None
        return sp

    def __getstate__(self) -> dict:
        return {"max_len": self.max_len, "_proto": self._proto}

    def __setstate__(self, state: dict) -> None:
        self.max_len = state["max_len"]
        self._proto = state["_proto"]
        self._sp = self._load(self._proto)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.GetPieceSize())

    @property
    def bos_id(self) -> int:
        return int(self._sp.bos_id())

    def encode(self, text: str) -> list[int]:
        return list(self._sp.EncodeAsIds(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.DecodeIds([int(i) for i in ids])

    def prompt_ids(self, prompt: str, state: np.ndarray | None = None) -> list[int]:
        """Unpadded token ids of a prompt (pi0 format; pi0.5 format when ``state`` is given)."""
        text = clean_text(prompt)
        if state is None:
            return [self.bos_id, *self.encode(text), *self.encode("\n")]
        bins = " ".join(str(int(b)) for b in discretize_state(np.asarray(state).reshape(-1)))
        return [self.bos_id, *self.encode(f"Task: {text}, State: {bins};\nAction: ")]

    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens int32 [max_len], mask bool [max_len])``: right-padded with 0 / False, or truncated."""
        ids = self.prompt_ids(prompt, state)
        if len(ids) > self.max_len:
            warnings.warn(
                f"prompt has {len(ids)} tokens, truncated to max_token_len {self.max_len}; shorten the prompt "
                "or raise max_token_len",
                PromptTruncatedWarning,
                stacklevel=2,
            )
            ids = ids[: self.max_len]
        tokens = np.zeros(self.max_len, dtype=np.int32)
        mask = np.zeros(self.max_len, dtype=bool)
        tokens[: len(ids)] = ids
        mask[: len(ids)] = True
        return tokens, mask
