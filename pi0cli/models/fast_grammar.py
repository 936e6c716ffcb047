"""What a well-formed pi0-FAST output is, as tables a decoder can gather from (numpy only, no JAX here).

A generated chunk is well formed when it is ``tokens("Action: ")``, then FAST ids whose decoded text holds
exactly ``N = horizon * action_dim`` characters (one per DCT coefficient) and no invalid UTF-8, then
``tokens("|")`` and EOS. :class:`ChunkGrammar` holds that language; ``Pi0FAST.generate`` walks it one token
per step (``fast_decode="constrained"``).

Why the number of coefficients a FAST id stands for depends on context: the BPE works on the UTF-8 bytes of
the coefficient string (byte-level pre-tokenisation), and a coefficient of value 128 or more is two to four
bytes. A token may end in the middle of a character (a lone lead byte) or start with the continuation bytes of
the previous token's character, so "characters per token" alone is not exact. The exact rule is a small
automaton: the state is where the byte stream stands inside a UTF-8 character (:data:`STATES` states, the
well-formed sequences of the Unicode standard's table 3-7, minus the bytes of U+FFFD, which the decoder reads
as a failure). Each token is folded through it once, per start state, when the tokenizer loads
(:func:`token_transitions`): ``next_state[s, id]`` (-1: the bytes are invalid from ``s``) and ``emitted[s, id]``
(characters the token completes). The decoder's state per row is then (phase, automaton state, coefficients
emitted so far), and each step's mask is a gather from these tables.

:func:`min_tokens` adds the fewest tokens that finish a chunk from each (state, coefficients left), so a
token is allowed only if the chunk can still be finished (exactly ``N`` coefficients, ``"|"`` and EOS)
within the decoding steps left: with the tables, a constrained chunk always decodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pi0cli.errors import Pi0Error

# Automaton states: how far the byte stream is inside one UTF-8 character, and which bytes may come next.
ACCEPT = 0  # between characters
_NEED1, _NEED2, _NEED2_E0, _NEED2_ED, _NEED2_EF, _NEED1_EFBF, _NEED3, _NEED3_F0, _NEED3_F4 = range(1, 10)
STATES = 10
REJECT = -1
#: "Unreachable" in :func:`min_tokens` (small enough that adding a step count never overflows int32).
INFINITE = 1 << 24

_CONT = range(0x80, 0xC0)
#: (state, bytes) -> state after the byte; the rows are the Unicode well-formed byte sequences (table 3-7).
_AFTER_LEAD = {
    **{b: _NEED1 for b in range(0xC2, 0xE0)},
    0xE0: _NEED2_E0, **{b: _NEED2 for b in range(0xE1, 0xED)}, 0xED: _NEED2_ED, 0xEE: _NEED2, 0xEF: _NEED2_EF,
    0xF0: _NEED3_F0, **{b: _NEED3 for b in range(0xF1, 0xF4)}, 0xF4: _NEED3_F4,
}
_AFTER_CONT: dict[int, list[tuple[range | Sequence[int], int]]] = {
    _NEED1: [(_CONT, ACCEPT)],
    _NEED2: [(_CONT, _NEED1)],
    _NEED2_E0: [(range(0xA0, 0xC0), _NEED1)],
    _NEED2_ED: [(range(0x80, 0xA0), _NEED1)],  # no surrogates
    _NEED2_EF: [(range(0x80, 0xBF), _NEED1), ([0xBF], _NEED1_EFBF)],
    _NEED1_EFBF: [([b for b in _CONT if b != 0xBD], ACCEPT)],  # EF BF BD is U+FFFD: a decode failure
    _NEED3: [(_CONT, _NEED2)],
    _NEED3_F0: [(range(0x90, 0xC0), _NEED2)],
    _NEED3_F4: [(range(0x80, 0x90), _NEED2)],  # nothing above U+10FFFF
}


def byte_automaton() -> tuple[np.ndarray, np.ndarray]:
    """``(next_state [STATES, 256], emitted [STATES, 256])`` of one byte (``REJECT`` where it is invalid)."""
    nxt = np.full((STATES, 256), REJECT, np.int32)
    nxt[ACCEPT, :0x80] = ACCEPT
    for byte, state in _AFTER_LEAD.items():
        nxt[ACCEPT, byte] = state
    for state, rules in _AFTER_CONT.items():
        for allowed, target in rules:
            nxt[state, list(allowed)] = target
    emitted = (nxt == ACCEPT).astype(np.int32)  # a byte that returns to ACCEPT completes a character
    return nxt, emitted


def byte_level_symbols() -> dict[str, int]:
    """The byte-level BPE alphabet: symbol -> byte. Printable Latin-1 bytes stand for themselves; the other
    68 (controls, space, soft hyphen...) are the code points from 256 up, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    symbol = {b: chr(b) for b in printable}
    for extra, b in enumerate(b for b in range(256) if b not in symbol):
        symbol[b] = chr(256 + extra)
    return {s: b for b, s in symbol.items()}


def token_bytes(text: str, symbols: Mapping[str, int]) -> bytes:
    """The bytes a byte-level decoder produces for one vocabulary entry: its symbols' bytes, or (an entry with a
    character outside the alphabet, e.g. an added token) its own UTF-8, as the ``tokenizers`` decoder does."""
    if all(c in symbols for c in text):
        return bytes(symbols[c] for c in text)
    return text.encode("utf-8")


def token_transitions(vocab: Mapping[str, int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per FAST id and automaton start state: ``(next_state [STATES, size], emitted [STATES, size])``.

    ``vocab``: the BPE vocabulary (entry -> id); ids in ``range(size)`` that it lacks are ``REJECT``ed (they
    decode to nothing the tokenizer could read back)."""
    byte_next, byte_emitted = byte_automaton()
    symbols = byte_level_symbols()
    nxt = np.full((STATES, size), REJECT, np.int32)
    emitted = np.zeros((STATES, size), np.int32)
    for text, token in vocab.items():
        if not 0 <= token < size:
            continue
        data = token_bytes(text, symbols)
        for start in range(STATES):
            state, count = start, 0
            for byte in data:
                count += int(byte_emitted[state, byte])
                state = int(byte_next[state, byte])
                if state == REJECT:
                    break
            if data and state != REJECT:  # an empty entry would be a step that emits nothing: never useful
                nxt[start, token], emitted[start, token] = state, count
    return nxt, emitted


def count_coefficients(ids: Iterable[int], next_state: np.ndarray, emitted: np.ndarray) -> tuple[int, bool]:
    """Characters (coefficients) a sequence of FAST ids decodes to, and whether it is valid complete UTF-8
    without U+FFFD (the tables' reading of a sequence; what a decoder would give)."""
    state, count = ACCEPT, 0
    for token in ids:
        if not 0 <= token < next_state.shape[1] or next_state[state, token] == REJECT:
            return count, False
        count += int(emitted[state, token])
        state = int(next_state[state, token])
    return count, state == ACCEPT


def min_tokens(next_state: np.ndarray, emitted: np.ndarray, coefficients: int) -> np.ndarray:
    """``[STATES, coefficients + 1]``: the fewest FAST ids that take the automaton from state ``s`` with ``r``
    coefficients still to emit to ``ACCEPT`` with none left (``INFINITE``: impossible)."""
    table = np.full((STATES, coefficients + 1), INFINITE, np.int64)
    valid = next_state != REJECT
    target = np.where(valid, next_state, 0)
    zero = valid & (emitted == 0)
    for r in range(coefficients + 1):
        column = np.full(STATES, INFINITE, np.int64)
        if r == 0:
            column[ACCEPT] = 0
        left = r - emitted
        some = valid & (emitted > 0) & (left >= 0)  # these read earlier columns, already final
        if some.any():
            cand = np.where(some, 1 + table[target, np.clip(left, 0, coefficients)], INFINITE)
            column = np.minimum(column, cand.min(axis=1))
        # A token that completes no character moves deeper into one (at most 3 bytes after a lead byte):
        # three relaxations within this column reach every such chain.
        for _ in range(3):
            cand = np.where(zero, 1 + column[target], INFINITE)
            column = np.minimum(column, cand.min(axis=1))
        table[:, r] = np.minimum(column, INFINITE)
    return table.astype(np.int32)


class GrammarError(Pi0Error, ValueError):
    """A chunk grammar that cannot be built."""


@dataclasses.dataclass(frozen=True, eq=False)
class ChunkGrammar:
    """The well-formed outputs of one pi0-FAST model (see the module docstring), in model ids.

    The decoder runs a program: ``program[pc]`` is the forced model id at step ``pc`` (the marker, the
    delimiter, EOS, then EOS again for a row that has finished); at ``pc == fast_phase`` it picks FAST ids
    under the tables until ``coefficients`` have been emitted, then goes on at ``fast_phase + 1``. FAST id
    ``f`` is model id ``fast_top - f``.
    """

    next_state: np.ndarray  # [STATES, F] int32
    emitted: np.ndarray  # [STATES, F] int32
    min_tokens: np.ndarray  # [STATES, coefficients + 1] int32
    program: tuple[int, ...]
    fast_phase: int
    coefficients: int
    fast_top: int

    @property
    def tail(self) -> int:
        """Steps after the FAST ids: the delimiter and EOS."""
        return len(self.program) - 2 - self.fast_phase

    @property
    def min_steps(self) -> int:
        """The fewest decoding steps a chunk takes (marker, fewest FAST ids, delimiter, EOS)."""
        return self.fast_phase + int(self.min_tokens[ACCEPT, self.coefficients]) + self.tail

    @classmethod
    def build(cls, next_state: np.ndarray, emitted: np.ndarray, *, coefficients: int, marker: Sequence[int],
              delimiter: Sequence[int], eos: int, fast_top: int) -> ChunkGrammar:
        if coefficients < 1:
            raise GrammarError(f"a chunk needs at least one coefficient, got {coefficients}")
        table = min_tokens(next_state, emitted, coefficients)
        if table[ACCEPT, coefficients] >= INFINITE:
            raise GrammarError(f"no sequence of this FAST tokenizer's ids decodes to exactly {coefficients} "
                               "coefficients; refit the tokenizer (its vocabulary lacks the single-byte ids)")
        program = (*marker, -1, *delimiter, eos, eos)
        return cls(next_state, emitted, table, tuple(int(p) for p in program), len(marker), int(coefficients),
                   int(fast_top))
