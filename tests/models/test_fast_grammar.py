"""Constrained pi0-FAST decoding: the UTF-8 automaton's token tables, the chunk grammar, and the JAX step that
walks it (random logits stand in for a model; a tiny Pi0FAST decodes through it too)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fast_tokenizer import train_sentencepiece

from pi0cli.models import fast_grammar as G
from pi0cli.models.fast_tokenizer import FastActionTokenizer
from pi0cli.models.pi0_fast import GrammarWalk, constrained_step
from pi0cli.models.tokenizer import FAST_SKIP_TOKENS, FASTTokenizer, PaligemmaTokenizer, TokenizerError

H, D = 6, 3


@functools.cache
def paligemma() -> PaligemmaTokenizer:
    return PaligemmaTokenizer(48, train_sentencepiece())


@functools.cache
def fitted(seed: int, scale: float, vocab: int) -> FastActionTokenizer:
    """A FAST tokenizer fitted on random chunks; a large ``scale`` gives coefficients of 2 and 3 UTF-8 bytes."""
    rng = np.random.default_rng(seed)
    chunks = np.clip(rng.normal(0, 0.5, (120, H, D)), -1, 1)
    return FastActionTokenizer.fit(list(chunks), scale=scale, vocab_size=vocab)


def sequences(fast: FastActionTokenizer) -> FASTTokenizer:
    size = paligemma().vocab_size + 1 + FAST_SKIP_TOKENS + fast.vocab_size
    return FASTTokenizer(paligemma(), fast, max_len=48, vocab_size=size)


tokenizers = st.tuples(st.integers(0, 2), st.sampled_from([10.0, 300.0, 3000.0]), st.sampled_from([256, 300, 420]))


# ------------------------------------------------------------------------------------------------ tables
def test_byte_alphabet_is_the_libraries():
    from tokenizers import pre_tokenizers

    symbols = G.byte_level_symbols()
    assert set(symbols) == set(pre_tokenizers.ByteLevel.alphabet()) and sorted(symbols.values()) == list(range(256))


def test_byte_automaton_accepts_exactly_valid_utf8_without_the_replacement_character():
    nxt, emitted = G.byte_automaton()
    rng = np.random.default_rng(0)
    # Every code point's encoding is one character; every random byte string agrees with Python's decoder.
    for cp in [*range(0, 0xD800, 7), *range(0xE000, 0x110000, 997), 0xFFFC, 0xFFFE, 0x10FFFF]:
        state, count = G.ACCEPT, 0
        for byte in chr(cp).encode():
            count, state = count + emitted[state, byte], nxt[state, byte]
        assert (state == G.ACCEPT and count == 1) == (cp != 0xFFFD)
    for _ in range(3000):
        data = bytes(rng.choice([rng.integers(0, 256), rng.integers(0x80, 0xC0), 0xED, 0xEF, 0xBF, 0xF4],
                                size=rng.integers(1, 6)).astype(np.uint8).tolist())
        state, count = G.ACCEPT, 0
        for byte in data:
            if state == G.REJECT:
                break
            count, state = count + emitted[state, byte], nxt[state, byte]
        try:
            text = data.decode("utf-8")
            valid = "\ufffd" not in text
        except UnicodeDecodeError:
            valid = False
        assert (state == G.ACCEPT) == valid, data
        if valid:
            assert count == len(text)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokenizers)
def test_coefficients_per_token_is_right_for_every_token(spec):
    fast = fitted(*spec)
    nxt, emitted = fast.transitions
    for token in range(fast.bpe_vocab_size):
        text = fast._bpe.decode([token])
        count, ok = G.count_coefficients([token], nxt, emitted)
        assert ok == ("\ufffd" not in text), token
        if ok:
            assert count == len(text) == fast.coefficients_per_token[token]
    assert (nxt[:, fast.bpe_vocab_size:] == G.REJECT).all()  # ids past the BPE vocabulary are never allowed


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokenizers, st.integers(0, 2**31 - 1))
def test_tables_count_any_token_sequence_like_the_decoder(spec, seed):
    """Context matters (a token can end inside a character): the tables agree with decoding whole sequences."""
    fast = fitted(*spec)
    nxt, emitted = fast.transitions
    rng = np.random.default_rng(seed)
    real = [ids for ids in fast.encode(np.clip(rng.normal(0, 0.5, (4, H, D)), -1, 1))]
    randoms = [rng.integers(0, fast.bpe_vocab_size, rng.integers(1, 12)).tolist() for _ in range(40)]
    for ids in real + randoms:
        text = fast._bpe.decode(ids)
        count, ok = G.count_coefficients(ids, nxt, emitted)
        assert ok == ("\ufffd" not in text), ids
        if ok:
            assert count == len(text)
    for ids in real:
        assert G.count_coefficients(ids, nxt, emitted) == (H * D, True)


def test_min_tokens_is_the_fewest_ids_that_finish():
    fast = fitted(0, 300.0, 300)
    nxt, emitted = fast.transitions
    limit = 12
    table = G.min_tokens(nxt, emitted, limit)
    assert table[G.ACCEPT, 0] == 0 and (table[1:, 0] >= G.INFINITE).all()
    # Brute force: every (state, coefficients) reachable from ACCEPT in 1, 2, 3 ids.
    best: dict[int, int] = {}
    frontier = {(G.ACCEPT, 0)}
    for length in (1, 2, 3):
        reached = set()
        for state, count in frontier:
            for t in np.flatnonzero(nxt[state] != G.REJECT):
                s, c = int(nxt[state, t]), count + int(emitted[state, t])
                if c <= limit:
                    reached.add((s, c))
                    if s == G.ACCEPT:
                        best.setdefault(c, length)
        frontier = reached
    for count in range(1, limit + 1):
        # table[s, r] finishes r more from s: from ACCEPT with r = count, the fewest ids emitting count.
        assert (table[G.ACCEPT, count] <= 3) == (count in best), count
        if count in best:
            assert table[G.ACCEPT, count] == best[count], count


def test_grammar_refuses_too_few_decoding_steps():
    tok = sequences(fitted(0, 10.0, 300))
    grammar = tok.chunk_grammar(H, D, 256)
    assert grammar.program[: grammar.fast_phase] == tuple(paligemma().encode("Action: "))
    assert grammar.program[-2:] == (paligemma().eos_id,) * 2
    with pytest.raises(TokenizerError, match=f"raise --max-decoding-steps to {grammar.min_steps}"):
        tok.chunk_grammar(H, D, grammar.min_steps - 1)


# ------------------------------------------------------------------------------------------------ decoding
def walk(grammar: G.ChunkGrammar, logits_fn, batch: int, steps: int, temperature: float, seed: int) -> np.ndarray:
    """The decode loop's token choice alone: ``constrained_step`` for ``steps`` steps on ``logits_fn(i, key)``."""

    @jax.jit
    def run(key):
        def body(carry, i):
            walk_state, key = carry
            key, k1, k2 = jax.random.split(key, 3)
            token, walk_state = constrained_step(grammar, logits_fn(i, k1), k2, temperature, walk_state, steps - i)
            return (walk_state, key), token

        return jax.lax.scan(body, (GrammarWalk.start(batch), key), jnp.arange(steps))[1].T

    return np.asarray(run(jax.random.key(seed)))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokenizers, st.integers(1, 16), st.sampled_from([0.0, 0.7, 3.0]), st.integers(0, 40), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_constrained_decoding_never_emits_a_malformed_chunk(spec, batch, temperature, slack, tempt, seed):
    """Random logits (tempted towards EOS and "|" early, with ``tempt``), a decoding budget from the tightest
    up: every row decodes, rows finish at their own step and then repeat EOS."""
    tok = sequences(fitted(*spec))
    grammar = tok.chunk_grammar(H, D, 10_000)
    steps = grammar.min_steps + slack
    vocab = tok.vocab_size
    bias = jnp.zeros(vocab)
    if tempt:
        bias = bias.at[jnp.asarray([paligemma().eos_id, *paligemma().encode("|")])].set(8.0)

    def logits_fn(i, key):
        return jax.random.normal(key, (batch, vocab)) * 3 + bias

    out = walk(grammar, logits_fn, batch, steps, temperature, seed)
    eos = paligemma().eos_id
    for row in out:
        actions, ok = tok.extract_actions(row, H, D)
        assert ok, row
        end = int(np.argmax(row == eos))
        assert (row[end:] == eos).all()


def test_rows_finish_at_different_steps():
    tok = sequences(fitted(1, 3000.0, 420))
    grammar = tok.chunk_grammar(H, D, 10_000)
    vocab = tok.vocab_size
    out = walk(grammar, lambda i, key: jax.random.normal(key, (6, vocab)) * 4, 6, grammar.min_steps + 60, 1.0, 3)
    ends = {int(np.argmax(row == paligemma().eos_id)) for row in out}
    assert len(ends) > 1
    assert all(tok.extract_actions(row, H, D)[1] for row in out)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokenizers, st.integers(0, 2**31 - 1))
def test_constrained_equals_greedy_when_greedy_is_well_formed(spec, seed):
    """A "model" whose greedy output is a well-formed chunk (logits peaked on it, plus noise): constrained
    greedy decoding picks the very same tokens."""
    tok = sequences(fitted(*spec))
    rng = np.random.default_rng(seed)
    targets = [tok.postfix_ids(c) for c in np.clip(rng.normal(0, 0.5, (3, H, D)), -1, 1)]
    steps = max(map(len, targets)) + 3
    rows = np.array([t + [paligemma().eos_id] * (steps - len(t)) for t in targets])
    peaks = jax.nn.one_hot(jnp.asarray(rows), tok.vocab_size) * 6.0  # [B, K, V]
    grammar = tok.chunk_grammar(H, D, steps)

    def logits_fn(i, key):  # noise below the peak: unconstrained greedy decoding gives exactly ``rows``
        return peaks[:, i] + jax.random.uniform(key, peaks[:, i].shape, maxval=5.0)

    np.testing.assert_array_equal(walk(grammar, logits_fn, 3, steps, 0.0, seed), rows)
