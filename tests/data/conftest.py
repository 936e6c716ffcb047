"""Fixtures of the data tests: datasets written by lerobot's own writer, a tiny sentencepiece model."""

from __future__ import annotations

from pathlib import Path

import pytest
from datahelpers import BUILTIN, LENGTHS, embodiment, train_sentencepiece


@pytest.fixture(scope="session")
def sp_model_bytes() -> bytes:
    return train_sentencepiece()


@pytest.fixture(scope="session")
def sp_model_path(sp_model_bytes, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tiny_tokenizer.model"
    path.write_bytes(sp_model_bytes)
    return path


@pytest.fixture(scope="session")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """One small dataset per built-in embodiment (2 episodes of 9 and 5 frames, 32x32 video), by name."""
    from pi0cli.data.synthetic import write_synthetic_dataset

    base = tmp_path_factory.mktemp("datasets")
    return {name: write_synthetic_dataset(base / name, embodiment(name), episodes=len(LENGTHS), frames=LENGTHS,
                                          seed=i) for i, name in enumerate(BUILTIN)}
