"""Session-wide test settings for every test under the repository (tests/ and each plugin's
embodiments/<robot>/tests/): nothing writes into the home directory, nothing reaches a hub."""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(scope="session", autouse=True)
def _offline_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("hf-home")
    os.environ.setdefault("HF_HOME", str(home))
    os.environ.setdefault("HF_LEROBOT_HOME", str(home / "lerobot"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("PI0_DEBUG", None)
    # Many tests compile the same tiny programs: a persistent compilation cache shared by the session (and
    # by the CLI subprocesses it starts) pays for each compilation once.
    cache = str(tmp_path_factory.mktemp("jax-cache"))
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    if "jax" in sys.modules:
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
