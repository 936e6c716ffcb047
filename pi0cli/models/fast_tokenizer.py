"""The FAST action tokenizer: DCT over time, quantisation, byte-level BPE (no JAX here).

An action chunk ``[H, D]`` (already normalised, e.g. quantile-normalised to about [-1, 1]) becomes
``coef = DCT-II(chunk, axis=time, norm="ortho")``, quantised to ``q = round(coef * scale)``, shifted by
``-min_token`` (values below ``min_token`` are clipped to it), flattened frequency-major (all dims of
frequency 0, then frequency 1, ...), each integer written as the unicode character of that code point, and
the string byte-pair encoded. Decoding inverts every step; the quantisation alone bounds the round-trip error
per element by ``0.5 * sqrt(H) / scale`` (the DCT is orthonormal per action dim, and the L2 error of one
column is at most ``0.5 / scale * sqrt(H)``), see :func:`quantization_error_bound`.

Two ways to get one:

- :meth:`FastActionTokenizer.load` reads a published processor directory (the layout of the reference's hub
  tokenizer: ``tokenizer.json`` for the BPE, ``processor_config.json`` with ``scale``, ``vocab_size``,
  ``min_token`` and optional ``action_dim`` / ``time_horizon``);
- :meth:`FastActionTokenizer.fit` trains one offline with the ``tokenizers`` library's BPE trainer
  (deterministic: same chunks, same tokenizer); :meth:`FastActionTokenizer.save` writes the same layout.

Differences from the reference processor, on purpose: the fitted BPE's initial alphabet is the 256 byte-level
symbols (the reference passes ``chr(0..range)``, most of which byte-level pre-tokenisation never produces,
so an integer whose UTF-8 bytes were unseen while fitting would be dropped silently); a decode that fails
(wrong length, a byte sequence that is not valid UTF-8) is reported per chunk by :meth:`decode_with_status`
instead of being printed. :meth:`decode` keeps the reference behaviour (zeros for a failed chunk).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pi0cli.errors import Pi0Error
from pi0cli.models.fast_grammar import ACCEPT, token_transitions

#: Where a fitted FAST tokenizer lives beside an asset id's ``norm_stats.json`` (``assets/<asset_id>/``).
ASSET_DIR = "fast_tokenizer"
TOKENIZER_FILE = "tokenizer.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"
#: The hub processor's class name (``processor_config.json``), kept so the reference can load what we write.
PROCESSOR_CLASS = "UniversalActionProcessor"
#: Byte-level alphabet size: a fitted vocabulary must at least hold every byte symbol.
BYTE_ALPHABET = 256
_REPLACEMENT_CHAR = 0xFFFD  # what a byte-level decoder yields for invalid UTF-8


class FastTokenizerError(Pi0Error, ValueError):
    """A FAST tokenizer directory or fit request that cannot be used."""


# ----------------------------------------------------------------------------------------------------- DCT
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``M`` (``coef = M @ x``); its transpose is the inverse (DCT-III)."""
    k = np.arange(n)[:, None]
    t = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * t + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def dct(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Orthonormal DCT-II along ``axis`` (scipy's ``dct(norm="ortho")`` when scipy is installed)."""
    try:
        from scipy.fft import dct as _scipy_dct
    except ImportError:  # pragma: no cover - scipy comes with lerobot's dependencies
        return np.moveaxis(np.tensordot(_dct_matrix(x.shape[axis]), np.moveaxis(x, axis, 0), axes=1), 0, axis)
    return np.asarray(_scipy_dct(np.asarray(x, np.float64), axis=axis, norm="ortho"))


def idct(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Inverse of :func:`dct` (orthonormal DCT-III)."""
    try:
        from scipy.fft import idct as _scipy_idct
    except ImportError:  # pragma: no cover
        return np.moveaxis(np.tensordot(_dct_matrix(x.shape[axis]).T, np.moveaxis(x, axis, 0), axes=1), 0, axis)
    return np.asarray(_scipy_idct(np.asarray(x, np.float64), axis=axis, norm="ortho"))


def quantization_error_bound(time_horizon: int, scale: float) -> float:
    """Largest absolute round-trip error of one element from quantisation alone: ``0.5 * sqrt(H) / scale``."""
    return 0.5 * math.sqrt(time_horizon) / scale


# ------------------------------------------------------------------------------------------------- tokenizer
@dataclasses.dataclass(frozen=True)
class DecodeResult:
    """Decoded chunks ``[B, H, D]`` (zeros where decoding failed) and a per-chunk success flag ``[B]``."""

    actions: np.ndarray
    ok: np.ndarray

    @property
    def failures(self) -> int:
        return int((~self.ok).sum())


class FastActionTokenizer:
    """DCT + BPE action tokenizer (see the module docstring). Picklable (the BPE travels as its JSON)."""

    def __init__(
        self,
        bpe_json: str,
        *,
        scale: float = 10.0,
        vocab_size: int = 1024,
        min_token: int = 0,
        action_dim: int | None = None,
        time_horizon: int | None = None,
    ):
        if scale <= 0:
            raise FastTokenizerError(f"scale must be positive, got {scale}")
        self.scale = float(scale)
        self.vocab_size = int(vocab_size)
        self.min_token = int(min_token)
        self.action_dim = action_dim
        self.time_horizon = time_horizon
        self._json = bpe_json
        self._bpe = self._load_bpe(bpe_json)
        # What each id does to the decoded text, per UTF-8 automaton state (constrained decoding reads it).
        self.transitions: tuple[np.ndarray, np.ndarray] = token_transitions(
            self._bpe.get_vocab(with_added_tokens=True), self.vocab_size)

    @staticmethod
    def _load_bpe(bpe_json: str) -> Any:
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_str(bpe_json)
        except Exception as exc:  # tokenizers raises a bare Exception for bad JSON
            raise FastTokenizerError(f"not a tokenizers JSON file ({exc}); pass a FAST tokenizer's tokenizer.json")\
                from None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_bpe"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bpe = self._load_bpe(self._json)

    @property
    def coefficients_per_token(self) -> np.ndarray:
        """``[vocab_size]``: coefficients each id decodes to at a character boundary (0 for an id that starts
        mid-character there or is unused; the exact, context-dependent rule is ``transitions``)."""
        return self.transitions[1][ACCEPT]

    @property
    def bpe_vocab_size(self) -> int:
        """Number of BPE ids actually in use (at most ``vocab_size``)."""
        return int(self._bpe.get_vocab_size())

    # ------------------------------------------------------------------------------------------- encode
    def quantize(self, chunk: np.ndarray) -> np.ndarray:
        """``[H, D]`` -> non-negative integers ``[H * D]`` (frequency-major), the symbols fed to the BPE."""
        coef = np.around(dct(np.asarray(chunk, np.float64), axis=0) * self.scale)
        return np.maximum(coef.reshape(-1) - self.min_token, 0).astype(np.int64)

    def encode(self, chunks: np.ndarray) -> list[list[int]]:
        """Chunks ``[H, D]`` or ``[B, H, D]`` -> one list of BPE ids per chunk."""
        arr = np.asarray(chunks)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise FastTokenizerError(f"action chunks have shape {arr.shape}; expected [H, D] or [B, H, D]")
        return [list(self._bpe.encode(_to_text(self.quantize(c))).ids) for c in arr]

    # ------------------------------------------------------------------------------------------- decode
    def _dims(self, time_horizon: int | None, action_dim: int | None) -> tuple[int, int]:
        h, d = time_horizon or self.time_horizon, action_dim or self.action_dim
        if h is None or d is None:
            raise FastTokenizerError(
                "decoding needs the chunk shape: pass time_horizon and action_dim (or set them on the tokenizer)"
            )
        return int(h), int(d)

    def decode_one(self, ids: Sequence[int], time_horizon: int, action_dim: int, *,
                   lenient: bool = False) -> np.ndarray | None:
        """One chunk ``[H, D]``, or None when the ids are not a well-formed chunk of that shape.

        ``lenient``: a wrong number of coefficients is cut or zero-filled at the end instead of failing. The
        coefficients are stored frequency-major, so that only touches the highest frequencies: a model that is
        nearly right (a BPE merge too many or too few) still gives a smooth chunk. Not the reference's rule."""
        try:
            text = self._bpe.decode([int(i) for i in ids], skip_special_tokens=False)
        except Exception:  # an id outside the vocabulary
            return None
        values = np.fromiter((ord(c) for c in text), dtype=np.int64, count=len(text))
        size = time_horizon * action_dim
        if (values == _REPLACEMENT_CHAR).any() or values.size == 0:
            return None
        if values.size != size:
            if not lenient:
                return None
            zero = -self.min_token  # the value of a zero coefficient
            values = np.concatenate([values[:size], np.full(max(0, size - values.size), zero, np.int64)])
        coef = (values + self.min_token).reshape(time_horizon, action_dim).astype(np.float64) / self.scale
        return idct(coef, axis=0)

    def decode_with_status(
        self, tokens: Iterable[Sequence[int]], *, time_horizon: int | None = None, action_dim: int | None = None
    ) -> DecodeResult:
        """Every chunk's actions ``[B, H, D]`` (zeros for a failed chunk) and which ones decoded."""
        h, d = self._dims(time_horizon, action_dim)
        chunks, ok = [], []
        for ids in tokens:
            out = self.decode_one(ids, h, d)
            ok.append(out is not None)
            chunks.append(np.zeros((h, d)) if out is None else out)
        actions = np.stack(chunks) if chunks else np.zeros((0, h, d))
        return DecodeResult(actions=actions, ok=np.asarray(ok, dtype=bool))

    def decode(
        self, tokens: Iterable[Sequence[int]], *, time_horizon: int | None = None, action_dim: int | None = None
    ) -> np.ndarray:
        """Reference behaviour: ``[B, H, D]`` with zeros for chunks that fail to decode (see ``decode_with_status``)."""
        return self.decode_with_status(tokens, time_horizon=time_horizon, action_dim=action_dim).actions

    # ------------------------------------------------------------------------------------------- files
    def processor_config(self) -> dict[str, Any]:
        return {
            "action_dim": self.action_dim,
            "min_token": self.min_token,
            "processor_class": PROCESSOR_CLASS,
            "scale": self.scale,
            "time_horizon": self.time_horizon,
            "vocab_size": self.vocab_size,
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json`` and ``processor_config.json`` (the hub processor layout) into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / TOKENIZER_FILE).write_text(self._json)
        (path / PROCESSOR_CONFIG_FILE).write_text(json.dumps(self.processor_config(), indent=2, sort_keys=True) + "\n")
        return path

    def files(self, prefix: str = "") -> dict[str, bytes]:
        """The directory's files as ``{prefix + name: bytes}`` (for checkpoint assets stored verbatim)."""
        return {
            f"{prefix}{TOKENIZER_FILE}": self._json.encode(),
            f"{prefix}{PROCESSOR_CONFIG_FILE}": (json.dumps(self.processor_config(), indent=2, sort_keys=True)
                                                 + "\n").encode(),
        }

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> FastActionTokenizer:
        """Read a FAST processor directory (``tokenizer.json`` + ``processor_config.json``) from a local path."""
        path = Path(directory).expanduser()
        files = [path / TOKENIZER_FILE, path / PROCESSOR_CONFIG_FILE]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FastTokenizerError(
                f"{path} is not a FAST tokenizer directory (missing {', '.join(missing)}); give the directory of a "
                "published FAST processor or one written by `pi0 norm-stats --fast-tokenizer`"
            )
        try:
            cfg = json.loads(files[1].read_text())
        except json.JSONDecodeError as exc:
            raise FastTokenizerError(f"{files[1]} is not valid JSON ({exc})") from None
        if not isinstance(cfg, dict):
            raise FastTokenizerError(f"{files[1]} must hold a JSON object")
        unknown = cfg.get("processor_class", PROCESSOR_CLASS)
        if unknown != PROCESSOR_CLASS:
            raise FastTokenizerError(f"{files[1]} is for {unknown!r}, not a FAST {PROCESSOR_CLASS}")

        def opt_int(key: str) -> int | None:
            return None if cfg.get(key) is None else int(cfg[key])

        return cls(
            files[0].read_text(),
            scale=float(cfg.get("scale", 10.0)),
            vocab_size=int(cfg.get("vocab_size", 1024)),
            min_token=int(cfg.get("min_token", 0)),
            action_dim=opt_int("action_dim"),
            time_horizon=opt_int("time_horizon"),
        )

    # ------------------------------------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        chunks: Iterable[np.ndarray],
        *,
        scale: float = 10.0,
        vocab_size: int = 1024,
        min_frequency: int = 2,
    ) -> FastActionTokenizer:
        """Train a tokenizer on normalised chunks (each ``[H, D]``, all the same shape). Deterministic."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        arrays = [np.asarray(c, np.float64) for c in chunks]
        if not arrays:
            raise FastTokenizerError("no action chunks to fit the FAST tokenizer on; give a non-empty dataset")
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise FastTokenizerError(f"action chunks must all be [H, D] of one shape, got {sorted(shapes)}")
        if vocab_size < BYTE_ALPHABET:
            raise FastTokenizerError(
                f"vocab_size {vocab_size} is below the {BYTE_ALPHABET} byte symbols the BPE starts from; raise it"
            )
        time_horizon, action_dim = arrays[0].shape
        coefs = np.around(dct(np.stack(arrays), axis=1) * scale)
        min_token = int(coefs.min())
        symbols = (coefs.reshape(len(arrays), -1) - min_token).astype(np.int64)

        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
            max_token_length=10_000,
        )
        bpe.train_from_iterator((_to_text(s) for s in symbols), trainer=trainer, length=len(arrays))
        return cls(
            bpe.to_str(),
            scale=scale,
            vocab_size=vocab_size,
            min_token=min_token,
            action_dim=int(action_dim),
            time_horizon=int(time_horizon),
        )


def _to_text(symbols: np.ndarray) -> str:
    return "".join(map(chr, symbols.tolist()))


# ------------------------------------------------------------------------------------------------- reports
@dataclasses.dataclass(frozen=True)
class FitReport:
    """How well a tokenizer represents a set of chunks (errors in normalised units)."""

    chunks: int
    max_abs_error: float
    mean_abs_error: float
    mean_tokens: float
    raw_coefficients: int  # H * D integers per chunk before BPE
    decode_failures: int

    @property
    def compression(self) -> float:
        """Raw DCT coefficients per BPE token (higher is better)."""
        return self.raw_coefficients / self.mean_tokens if self.mean_tokens else float("nan")


def evaluate(tokenizer: FastActionTokenizer, chunks: Sequence[np.ndarray]) -> FitReport:
    """Round-trip every chunk: error after decoding, tokens per chunk, failures."""
    arr = np.stack([np.asarray(c, np.float64) for c in chunks])
    tokens = tokenizer.encode(arr)
    result = tokenizer.decode_with_status(tokens, time_horizon=arr.shape[1], action_dim=arr.shape[2])
    err = np.abs(result.actions - arr)[result.ok]
    return FitReport(
        chunks=len(arr),
        max_abs_error=float(err.max()) if err.size else float("nan"),
        mean_abs_error=float(err.mean()) if err.size else float("nan"),
        mean_tokens=float(np.mean([len(t) for t in tokens])),
        raw_coefficients=int(arr.shape[1] * arr.shape[2]),
        decode_failures=result.failures,
    )


def select_evenly(n: int, limit: int | None) -> np.ndarray:
    """``min(n, limit)`` indices spread evenly over ``range(n)`` (deterministic; all of them without a limit)."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def fit_from_blocks(
    action_blocks: Iterable[np.ndarray],
    *,
    normalize: Callable[[np.ndarray], np.ndarray],
    scale: float = 10.0,
    vocab_size: int = 1024,
    max_chunks: int | None = 200_000,
) -> tuple[FastActionTokenizer, FitReport]:
    """Fit on a dataset's action chunks and report on them.

    ``action_blocks`` yields model-space chunks ``[m, H, D]`` (after the robot's input transform and delta
    actions, before normalisation), ``normalize`` maps such a block to the units the model sees (the quantile
    normalisation of pi0-FAST). At most ``max_chunks`` chunks, spread evenly over the dataset, are used for
    both fitting and the report (round-trip error in normalised units, tokens per chunk).
    """
    blocks = [np.asarray(normalize(np.asarray(b, np.float64)), np.float64) for b in action_blocks]
    if not blocks or not sum(len(b) for b in blocks):
        raise FastTokenizerError("the dataset has no action chunks to fit the FAST tokenizer on")
    chunks = np.concatenate(blocks)
    chunks = chunks[select_evenly(len(chunks), max_chunks)]
    tokenizer = FastActionTokenizer.fit(list(chunks), scale=scale, vocab_size=vocab_size)
    return tokenizer, evaluate(tokenizer, list(chunks))


def asset_path(assets_dir: str | os.PathLike[str], asset_id: str) -> Path:
    """``<assets_dir>/<asset_id>/fast_tokenizer``: where ``pi0 norm-stats --fast-tokenizer`` writes one."""
    return Path(assets_dir) / asset_id / ASSET_DIR
