"""Helpers shared by the data tests (imported as ``datahelpers``; fixtures live in conftest.py)."""

from __future__ import annotations

import dataclasses
import io

BUILTIN = ("aloha", "aloha_sim", "droid", "libero", "ur5")
#: Episode lengths of the fixture datasets: a short last episode so chunks of HORIZON run past its end.
LENGTHS = (9, 5)
HORIZON = 4


def embodiment(name: str):
    from pi0cli.plugins.manager import get_registry

    return get_registry().embodiment(name)


def model_config(model_type: str = "pi0", **overrides):
    """A tiny model config with the full-size action_dim (the tiny presets' 8 is below ALOHA's 14)."""
    from pi0cli.models.config import preset

    # max_token_len None: the reference lengths (48 for pi0, 200 for pi0.5) instead of the tiny preset's 8.
    overrides = {"action_dim": 32, "action_horizon": HORIZON, "max_token_len": None, **overrides}
    return dataclasses.replace(preset(f"{model_type}_tiny"), **overrides)


def train_sentencepiece(vocab_size: int = 320) -> bytes:
    import sentencepiece

    sentences = [
        "pick up the cube", "fold the towel", "open the drawer slowly", "Transfer cube", "Task: , State: ;",
        "Action: ", "put the red block in the bowl", "stack the cups", "0 1 2 3 4 5 6 7 8 9 10 127 128 255",
        "uncap the pen", "wipe the table\n", "place the apple on the plate",
    ] * 20
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buffer, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, hard_vocab_limit=False,
        minloglevel=2,
    )
    return buffer.getvalue()


class CountingDataset:
    """A picklable toy dataset: item i is ``{"x": [i, i], "prompt": str(i)}``; records what was read."""

    def __init__(self, n: int):
        self.n = n
        self.reads: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        import numpy as np

        self.reads.append(int(i))
        return {"x": np.array([i, i], dtype=np.int64), "nested": {"y": np.float32(i)}}
