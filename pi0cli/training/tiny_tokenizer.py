"""A small sentencepiece prompt tokenizer for models whose vocabulary is smaller than PaliGemma's (the tiny
presets): trained on the dataset's tasks and stored in the checkpoint (``tokenizer.model``)."""

from __future__ import annotations

import io
from collections.abc import Sequence

#: Pieces in the tiny prompt tokenizer at most (sentencepiece may stop short on a small corpus).
TINY_TOKENIZER_VOCAB = 320


def train_tiny_tokenizer(sentences: Sequence[str] = ()) -> bytes:
    """A small sentencepiece model (vocab 320, ids as Gemma's: pad 0, eos 1, bos 2, unk 3)."""
    import sentencepiece

    corpus = list(sentences) + [
        "pick up the cube", "transfer cube", "fold the towel", "open the drawer", "uncap the pen",
        "put the object in the bowl", "move the arm to the left", "Task: State: Action:",
        "0 1 2 3 4 5 6 7 8 9 10 100 128 255", "the quick brown fox jumps over the lazy dog",
    ] * 4
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buffer, vocab_size=TINY_TOKENIZER_VOCAB, model_type="bpe",
        byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, hard_vocab_limit=False, minloglevel=2,
    )
    return buffer.getvalue()
