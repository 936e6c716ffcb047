"""The PaliGemma prompt tokenizer (sentencepiece), in the reference's pi0 and pi0.5 prompt formats.

pi0:   ``BOS + tokens(cleaned text) + tokens("\\n")``
pi0.5: ``BOS + tokens("Task: {cleaned text}, State: {bins};\\nAction: ")`` where ``bins`` are the 256-bin
       discretised (normalised, unpadded) state joined with spaces.

``cleaned text`` = the prompt stripped, with ``_`` and newlines turned into spaces (no lower-casing).
Token ids are right-padded with 0 (mask False) or truncated (with a :class:`PromptTruncatedWarning`) to
``max_len``.

pi0-FAST (:class:`FASTTokenizer`, prompt lower-cased, stripped, ``_`` -> space; newlines kept):
prefix  ``BOS + tokens("Task: {text}, State: {bins};\n")`` (ar 0, no loss), postfix (training only)
``tokens("Action: ") + mapped FAST ids + tokens("|") + EOS`` (ar 1, loss). FAST id ``i`` maps to the model id
``vocab_size - 1 - 128 - i`` (the top of the vocabulary below its last 128 special tokens).

The model file is found, in order: an explicit path (a file, or a directory holding
``paligemma_tokenizer.model``), ``$PI0_TOKENIZER``, the pi0 cache (``$PI0_CACHE_DIR`` or
``~/.cache/pi0``), the reference's cache (``$OPENPI_DATA_HOME`` or ``~/.cache/openpi``, under ``big_vision/``);
failing that it is downloaded from the reference location into the pi0 cache, unless offline
(``HF_HUB_OFFLINE``/``PI0_OFFLINE``), in which case one error names every place looked at.

No JAX here: the data pipeline and the CLI use this module.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pi0cli.downloads import cache_dir, fetch, offline, openpi_cache_dir
from pi0cli.errors import Pi0Error
from pi0cli.models.fast_decode import DEFAULT_FAST_DECODE, FAST_DECODE_RULES, FastDecode  # re-exported

if TYPE_CHECKING:
    from pi0cli.models.fast_grammar import ChunkGrammar
    from pi0cli.models.fast_tokenizer import FastActionTokenizer

#: The reference's file name of the shared PaliGemma model (``big_vision/`` in its cache); a checkpoint's
#: own tokenizer is :data:`pi0cli.checkpoint.TOKENIZER_FILENAME`.
PALIGEMMA_TOKENIZER_FILENAME = "paligemma_tokenizer.model"
#: Where the reference fetches the tokenizer (``gs://big_vision/paligemma_tokenizer.model``) over HTTPS.
TOKENIZER_URL = "https://storage.googleapis.com/big_vision/paligemma_tokenizer.model"
#: Number of bins of the discretised state in pi0.5 prompts.
STATE_BINS = 256
#: pi0-FAST: ids at the very top of the vocabulary that FAST ids never map to (PaliGemma's 128 ``<seg>`` tokens).
FAST_SKIP_TOKENS = 128


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


def candidate_paths(path: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every place a tokenizer model is looked for, in order."""
    def as_file(p: Path) -> Path:
        return p / PALIGEMMA_TOKENIZER_FILENAME if p.is_dir() or p.suffix != ".model" else p

    if path is not None:
        return [as_file(Path(path).expanduser())]
    found: list[Path] = []
    if os.environ.get("PI0_TOKENIZER"):
        found.append(as_file(Path(os.environ["PI0_TOKENIZER"]).expanduser()))
    found.append(cache_dir() / PALIGEMMA_TOKENIZER_FILENAME)
    found.append(openpi_cache_dir() / "big_vision" / PALIGEMMA_TOKENIZER_FILENAME)
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
    if not download or offline():
        raise TokenizerError(
            f"PaliGemma tokenizer not found (looked in {looked}) and offline; copy paligemma_tokenizer.model "
            f"there or pass --tokenizer PATH (it is at {TOKENIZER_URL})"
        )
    return _download(cache_dir() / PALIGEMMA_TOKENIZER_FILENAME, looked)


def _download(target: Path, looked: str) -> Path:
    try:
        return fetch(TOKENIZER_URL, target, timeout=30)
    except OSError as exc:  # URLError and socket timeouts are OSErrors
        raise TokenizerError(
            f"PaliGemma tokenizer not found (looked in {looked}) and downloading {TOKENIZER_URL} failed ({exc}); "
            "copy the file there or pass --tokenizer PATH"
        ) from None


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
            raise TokenizerError(
                f"not a sentencepiece model ({exc}); pass the PaliGemma tokenizer .model file"
            ) from None
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

    @property
    def eos_id(self) -> int:
        return int(self._sp.eos_id())

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


def fast_vocab_that_fits(model_vocab_size: int, text_vocab_size: int, *, cap: int = 1024) -> int:
    """The FAST vocabulary to fit for a model: ``cap``, or fewer where a model vocabulary smaller than PaliGemma's
    leaves less room between the text ids and the reserved top ids (FAST ids map down from there)."""
    if model_vocab_size == text_vocab_size:  # PaliGemma: FAST ids reuse the top of the text vocabulary
        return cap
    return min(cap, model_vocab_size - 1 - FAST_SKIP_TOKENS - text_vocab_size)


def fast_image_slots(
    images: dict[str, np.ndarray], masks: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """An embodiment's pi0 camera slots -> pi0-FAST's (``config.FAST_SLOT_SOURCES``).

    ``base_1_rgb`` is always shown (mask True), as the reference shows its zero padding image; a missing source
    becomes a zero image like the base camera's.
    """
    from pi0cli.models.config import FAST_SLOT_SOURCES

    if "base_0_rgb" not in images:
        raise TokenizerError(f"pi0-FAST needs a base_0_rgb camera; the embodiment gives {sorted(images)}")
    base = np.asarray(images["base_0_rgb"])
    out_images, out_masks = {}, {}
    for slot, source in FAST_SLOT_SOURCES.items():
        if source in images:
            out_images[slot] = np.asarray(images[source])
            out_masks[slot] = np.asarray(masks.get(source, True), dtype=bool)
        else:
            out_images[slot] = np.zeros_like(base)
            out_masks[slot] = np.asarray(slot == "base_1_rgb", dtype=bool)
    out_masks["base_1_rgb"] = np.ones_like(out_masks["base_1_rgb"], dtype=bool)
    return out_images, out_masks


def fast_clean_text(text: str) -> str:
    """pi0-FAST prompt cleaning (reference): lower-cased, stripped, ``_`` becomes a space (newlines kept)."""
    return text.lower().strip().replace("_", " ")


def _pad_or_truncate(rows: Sequence[list[int]], max_len: int, what: str) -> list[list[int]]:
    n = len(rows[0])
    if n > max_len:
        warnings.warn(
            f"{what} has {n} tokens, truncated to max_token_len {max_len}; shorten the prompt, lower the action "
            "tokens per chunk (a larger FAST vocabulary or a smaller scale) or raise max_token_len",
            PromptTruncatedWarning,
            stacklevel=3,
        )
        return [r[:max_len] for r in rows]
    return [r + [0] * (max_len - n) for r in rows]


class FASTTokenizer:
    """pi0-FAST token sequences: prompt + discretised state (+ FAST action tokens when training).

    ``vocab_size`` is the model's vocabulary size (the top of which FAST ids map into); it defaults to the
    sentencepiece model's, as the reference (257,152 for PaliGemma). The action-id range must not overlap
    the text ids the sentencepiece model can produce. Picklable.
    """

    def __init__(
        self,
        paligemma: PaligemmaTokenizer,
        fast: FastActionTokenizer,
        *,
        max_len: int = 250,
        vocab_size: int | None = None,
    ):
        if max_len <= 0:
            raise TokenizerError(f"max_len must be positive, got {max_len}")
        self.paligemma, self.fast, self.max_len = paligemma, fast, int(max_len)
        self.vocab_size = int(vocab_size if vocab_size is not None else paligemma.vocab_size)
        highest = self.vocab_size - 1 - FAST_SKIP_TOKENS
        lowest = highest - (fast.vocab_size - 1)
        if lowest < paligemma.vocab_size and self.vocab_size != paligemma.vocab_size:
            raise TokenizerError(
                f"FAST ids (vocab {fast.vocab_size}) map to model ids {lowest}..{highest}, overlapping the "
                f"{paligemma.vocab_size} text ids; fit a FAST tokenizer of at most "
                f"{fast_vocab_that_fits(self.vocab_size, paligemma.vocab_size)} ids (`pi0 norm-stats ... "
                "--fast-tokenizer --preset PRESET` picks that size) or use a model with a larger vocabulary"
            )
        if lowest < 0:
            raise TokenizerError(
                f"the model vocabulary ({self.vocab_size}) is too small for {fast.vocab_size} FAST ids plus "
                f"{FAST_SKIP_TOKENS} reserved ones"
            )

    # ------------------------------------------------------------------------------------------- id mapping
    def fast_to_model_ids(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """FAST ids -> model ids ``vocab_size - 1 - 128 - id`` (the map is its own inverse)."""
        return self.vocab_size - 1 - FAST_SKIP_TOKENS - np.asarray(ids, dtype=np.int64)

    def model_to_fast_ids(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        return self.fast_to_model_ids(ids)

    def is_action_id(self, ids: np.ndarray) -> np.ndarray:
        """Which model ids lie in the FAST range."""
        fast = self.model_to_fast_ids(ids)
        return (fast >= 0) & (fast < self.fast.vocab_size)

    # ------------------------------------------------------------------------------------------- tokenize
    def prefix_ids(self, prompt: str, state: np.ndarray) -> list[int]:
        """``BOS + tokens("Task: {text}, State: {bins};\\n")``."""
        bins = " ".join(str(int(b)) for b in discretize_state(np.asarray(state).reshape(-1)))
        text = f"Task: {fast_clean_text(prompt)}, State: {bins};\n"
        return [self.paligemma.bos_id, *self.paligemma.encode(text)]

    def state_token_mask(self, prompt: str, state: np.ndarray) -> np.ndarray:
        """Which positions of the token sequence carry the state: bool ``[max_len]``, True from the first
        token after ``"State:"`` up to, not including, the prefix's last token (whose output predicts the first
        action token, so it must stay visible).

        Found by comparing the prefix with the tokens of its text up to ``"State:"``; where the tokenizer merges
        across that boundary the mask starts at the first token that differs, so it never misses a state
        token. Training hides these positions from a random share of examples (``state_dropout``)."""
        prefix = self.prefix_ids(prompt, state)
        head = [self.paligemma.bos_id, *self.paligemma.encode(f"Task: {fast_clean_text(prompt)}, State:")]
        start = 0
        for a, b in zip(head, prefix, strict=False):
            if a != b:
                break
            start += 1
        mask = np.zeros(self.max_len, bool)
        mask[min(start, self.max_len):min(len(prefix) - 1, self.max_len)] = True
        return mask

    def postfix_ids(self, actions: np.ndarray) -> list[int]:
        """``tokens("Action: ") + mapped FAST ids + tokens("|") + EOS`` of one normalised chunk ``[H, D]``."""
        fast_ids = self.fast.encode(np.asarray(actions)[None])[0]
        mapped = self.fast_to_model_ids(fast_ids).tolist()
        return [*self.paligemma.encode("Action: "), *mapped, *self.paligemma.encode("|"), self.paligemma.eos_id]

    def tokenize(
        self, prompt: str, state: np.ndarray, actions: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(tokens int32, mask bool, ar_mask int32, loss_mask bool)``, each ``[max_len]``.

        ``state`` is the normalised, unpadded state; ``actions`` the normalised, unpadded chunk ``[H, D]``
        (None at inference: no postfix). Right-padded with 0 / False, or truncated with a warning.
        """
        prefix = self.prefix_ids(prompt, state)
        postfix = [] if actions is None else self.postfix_ids(actions)
        tokens = prefix + postfix
        rows = [tokens, [1] * len(tokens), [0] * len(prefix) + [1] * len(postfix),
                [0] * len(prefix) + [1] * len(postfix)]
        tok, mask, ar, loss = _pad_or_truncate(rows, self.max_len, "pi0-FAST token sequence")
        return (np.asarray(tok, np.int32), np.asarray(mask, bool), np.asarray(ar, np.int32), np.asarray(loss, bool))

    # ------------------------------------------------------------------------------------------- detokenize
    def action_ids(self, output: np.ndarray | Sequence[int]) -> list[int] | None:
        """The FAST ids of a generated sequence: the action-range ids right after ``tokens("Action: ")``, up
        to the first other id (``"|"``, EOS, padding). None when there is no ``"Action: "``.

        The reference decodes the ids to text, splits on ``"Action: "`` and ``"|"`` and re-encodes; working on
        ids gives the same answer for well-formed outputs without a text round trip (which a small test
        vocabulary could not make for ids above its size).
        """
        ids = [int(i) for i in np.asarray(output).reshape(-1)]
        if self.paligemma.eos_id in ids:
            ids = ids[: ids.index(self.paligemma.eos_id)]
        marker = self.paligemma.encode("Action: ")
        m = len(marker)
        for start in range(len(ids) - m + 1):
            if ids[start : start + m] == marker:
                rest = np.asarray(ids[start + m :], dtype=np.int64)
                in_range = self.is_action_id(rest)
                end = int(np.argmin(in_range)) if not in_range.all() else len(rest)
                return self.model_to_fast_ids(rest[:end]).tolist()
        return None

    def chunk_grammar(self, action_horizon: int, action_dim: int, max_decoding_steps: int) -> ChunkGrammar:
        """The well-formed outputs for chunks ``[action_horizon, action_dim]`` (constrained decoding): this
        tokenizer's marker, FAST ids, delimiter and EOS. Refuses a ``max_decoding_steps`` too small to hold one."""
        from pi0cli.models.fast_grammar import ChunkGrammar, GrammarError

        next_state, emitted = self.fast.transitions
        try:
            grammar = ChunkGrammar.build(
                next_state, emitted, coefficients=action_horizon * action_dim,
                marker=self.paligemma.encode("Action: "), delimiter=self.paligemma.encode("|"),
                eos=self.paligemma.eos_id, fast_top=self.vocab_size - 1 - FAST_SKIP_TOKENS)
        except GrammarError as exc:
            raise TokenizerError(str(exc)) from None
        if grammar.min_steps > max_decoding_steps:
            raise TokenizerError(
                f"max_decoding_steps {max_decoding_steps} cannot hold one chunk of {action_horizon}x{action_dim} "
                f"coefficients (at least {grammar.min_steps} tokens); raise --max-decoding-steps to "
                f"{grammar.min_steps} or more")
        return grammar

    def extract_actions(
        self, output: np.ndarray | Sequence[int], action_horizon: int, action_dim: int, *, lenient: bool = False
    ) -> tuple[np.ndarray, bool]:
        """``(actions [H, D], ok)``; zeros and ``ok=False`` when the output holds no well-formed chunk
        (``lenient``: see :meth:`FastActionTokenizer.decode_one`)."""
        fast_ids = self.action_ids(output)
        if fast_ids is None:
            return np.zeros((action_horizon, action_dim)), False
        chunk = self.fast.decode_one(fast_ids, action_horizon, action_dim, lenient=lenient)
        if chunk is None:
            return np.zeros((action_horizon, action_dim)), False
        return chunk, True


class FastDecodeError(Pi0Error):
    """Generated pi0-FAST tokens held no well-formed action chunk (raised only with ``on_failure="raise"``)."""

    kind = "decode_failure"


#: Key of the per-request count of chunks that failed to decode (0 or 1 per request; summed in reports).
DECODE_FAILURES_KEY = "decode_failures"
#: Key of the number of tokens the model generated for a chunk (its EOS included; all of them without one).
ACTION_TOKENS_KEY = "action_tokens"
#: Key of the decoding rule a reply's chunk went through (``/metrics`` and eval reports count failures per rule).
DECODE_RULE_KEY = "fast_decode"


def generated_length(output: np.ndarray | Sequence[int], eos_id: int) -> int:
    """Tokens a decoding loop generated for one row: up to and including its first ``eos_id``, else all."""
    ids = np.asarray(output).reshape(-1)
    hits = np.flatnonzero(ids == eos_id)
    return int(hits[0]) + 1 if hits.size else int(ids.size)


@dataclasses.dataclass(frozen=True, eq=False)
class FastActionOutputs:
    """Output transform: generated token ids ``[K]`` under ``"actions"`` -> the normalised chunk
    ``[action_horizon, action_dim]`` zero-padded to ``pad_to`` dims, plus ``decode_failures`` (0 or 1) and
    ``action_tokens`` (tokens generated for the chunk: what its decoding latency scales with).

    ``on_failure="zeros"`` (default) answers a failed decode with zeros in normalised units, as the reference
    does (after un-normalisation: the middle of each dim's range); ``"raise"`` raises :class:`FastDecodeError`
    so the caller can refuse the chunk instead. ``decode="lenient"`` repairs a wrong number of DCT coefficients
    (cut or zero-filled at the highest frequencies) instead of failing; ``"strict"`` is the reference;
    ``"constrained"``: the tokens were decoded under :meth:`FASTTokenizer.chunk_grammar`, so they always hold a
    chunk; they are read strictly (a failure would be counted, not hidden). Replies carry the rule
    (``fast_decode``).
    """

    tokenizer: FASTTokenizer
    action_horizon: int
    action_dim: int
    pad_to: int | None = None
    on_failure: Literal["zeros", "raise"] = "zeros"
    decode: FastDecode = DEFAULT_FAST_DECODE

    def __post_init__(self) -> None:
        if self.decode not in FAST_DECODE_RULES:
            raise TokenizerError(f"pi0-FAST decoding must be one of {', '.join(FAST_DECODE_RULES)}; got "
                                 f"{self.decode!r}")

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        actions, ok = self.tokenizer.extract_actions(np.asarray(data["actions"]), self.action_horizon,
                                                     self.action_dim, lenient=self.decode == "lenient")
        if not ok and self.on_failure == "raise":
            raise FastDecodeError(
                "the model's output holds no well-formed FAST action chunk (no 'Action: ' segment or a wrong "
                "number of values); the checkpoint may be undertrained or max_decoding_steps too small"
            )
        width = max(self.pad_to or self.action_dim, self.action_dim)
        padded = np.zeros((self.action_horizon, width), np.float32)
        padded[:, : self.action_dim] = actions
        generated = generated_length(data["actions"], self.tokenizer.paligemma.eos_id)
        return {**data, "actions": padded, DECODE_FAILURES_KEY: int(not ok), ACTION_TOKENS_KEY: generated,
                DECODE_RULE_KEY: self.decode}
