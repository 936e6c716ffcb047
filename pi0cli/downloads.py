"""Downloads and caches: the one offline switch, the cache directories, one HTTP downloader, and remote
(``gs://``) checkpoints found in or fetched into the cache.

Offline is read from the environment (``PI0_OFFLINE`` or ``HF_HUB_OFFLINE`` set to 1/true/yes/on) each time
it is asked and never written: a library call must not change what later calls in the process believe.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path

from pi0cli.checkpoint import CheckpointError

OFFLINE_ENV = ("PI0_OFFLINE", "HF_HUB_OFFLINE")
GCS_API = "https://storage.googleapis.com/storage/v1/b/{bucket}/o"
GCS_OBJECT = "https://storage.googleapis.com/{bucket}/{name}"


def offline(environ: Mapping[str, str] | None = None) -> bool:
    """Whether downloads are off (``PI0_OFFLINE`` or ``HF_HUB_OFFLINE``)."""
    env = os.environ if environ is None else environ
    return any(env.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENV)


def _home_cache(env: Mapping[str, str]) -> Path:
    """``~/.cache`` of ``env``'s ``$HOME``."""
    return (Path(env["HOME"]) if env.get("HOME") else Path.home()) / ".cache"


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The pi0 download cache (``$PI0_CACHE_DIR`` or ``~/.cache/pi0``)."""
    env = os.environ if environ is None else environ
    return Path(env.get("PI0_CACHE_DIR") or _home_cache(env) / "pi0")


def openpi_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The reference's cache (``$OPENPI_DATA_HOME`` or ``~/.cache/openpi``), read but never written."""
    env = os.environ if environ is None else environ
    return Path(env.get("OPENPI_DATA_HOME") or _home_cache(env) / "openpi")


def hf_home(environ: Mapping[str, str] | None = None) -> Path:
    """Hugging Face's cache (``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface`` or ``~/.cache/huggingface``),
    where lerobot keeps datasets."""
    env = os.environ if environ is None else environ
    return Path(env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or _home_cache(env)) / "huggingface").expanduser()


def checkpoint_cache_dirs() -> list[Path]:
    """Where downloaded checkpoints are looked for: the pi0 cache, then the reference's."""
    return [cache_dir(), openpi_cache_dir()]


def fetch(url: str, target: Path, *, timeout: float = 30.0) -> Path:
    """Fetch ``url`` into ``target`` through a temporary sibling file (a reader never sees half a file).

    Network failures raise ``OSError`` (``urllib.error.URLError`` is one); the caller words the error.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def resolve_checkpoint(location: str, *, download: bool = True, timeout: float = 15.0) -> Path:
    """A local directory for ``location``: a path as is, or a ``gs://bucket/path`` URL found in (or downloaded
    into) the checkpoint cache. Fails with one line naming every place looked at and how to pass --checkpoint."""
    if not location.startswith("gs://"):
        path = Path(location).expanduser()
        if not path.is_dir():
            from pi0cli.checkpoint import resolve_step

            resolve_step(path)  # a file or a missing path: one line saying what to point at
        return path
    bucket, _, prefix = location.removeprefix("gs://").partition("/")
    prefix = prefix.strip("/")
    candidates = [root / bucket / prefix for root in checkpoint_cache_dirs()]
    for candidate in candidates:
        if (candidate / "params").is_dir():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    hint = (f"download it (gsutil -m cp -r {location} {candidates[0].parent}/) or pass --checkpoint DIR "
            "with a local checkpoint")
    if not download or offline():
        raise CheckpointError(
            f"checkpoint {location} is not in the cache (looked in {looked}) and downloads are off; {hint}")
    try:
        return _download_gcs(bucket, prefix, candidates[0], timeout)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(f"checkpoint {location} is not in the cache (looked in {looked}) and downloading it "
                              f"failed ({reason}); {hint}") from None


def _gcs_names(bucket: str, prefix: str, timeout: float) -> list[str]:
    names: list[str] = []
    token = None
    while True:
        query = {"prefix": prefix + "/", "fields": "items(name),nextPageToken"}
        if token:
            query["pageToken"] = token
        url = GCS_API.format(bucket=bucket) + "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            listing = json.loads(response.read())
        names += [item["name"] for item in listing.get("items", [])]
        token = listing.get("nextPageToken")
        if not token:
            return names


def _download_gcs(bucket: str, prefix: str, target: Path, timeout: float) -> Path:
    names = _gcs_names(bucket, prefix, timeout)
    if not names:
        raise ValueError(f"no objects under gs://{bucket}/{prefix}/")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.download-{uuid.uuid4().hex[:8]}"
    try:
        for name in names:
            rel = name[len(prefix) + 1:]
            if not rel or rel.endswith("/") or ".." in Path(rel).parts:
                continue
            fetch(GCS_OBJECT.format(bucket=bucket, name=urllib.parse.quote(name)), tmp / rel, timeout=timeout)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
