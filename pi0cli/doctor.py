"""Environment checks behind ``pi0 doctor``: is this machine ready to record, train, serve and evaluate?

Each check returns :class:`Row` objects (what was checked, its status, what was found, and for a problem the
fix). ``fail`` rows are blocking (pi0 cannot do its basic jobs: train on a LeRobot dataset, serve a
checkpoint); ``warn`` rows limit something (no accelerator, a broken plugin) without stopping the rest. What
a plugin needs of the host (a simulator's headless OpenGL) is the plugin's own :class:`DoctorCheck`, added
through the ``pi0_doctor_checks`` hook. The library takes the plugin registry as an object and imports nothing
heavy at module level.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pi0cli.diagnostics import DoctorCheck, Row, Status
from pi0cli.scheduling import keep_scheduling

if TYPE_CHECKING:
    from pi0cli.plugins.manager import Registry

__all__ = ["DoctorCheck", "Row", "Status", "run_checks"]  # the row types live in pi0cli.diagnostics (a contract)

def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------- checks


def check_python() -> list[Row]:
    # pip refuses to install pi0 below 3.12 (requires-python), so this row is a record of which one runs.
    return [Row("python", "ok", f"Python {platform.python_version()} at {sys.executable}")]


def check_pi0() -> list[Row]:
    import pi0cli

    return [Row("pi0", "ok", f"pi0 {pi0cli.__version__} from {Path(pi0cli.__file__).parent}")]


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_jax() -> list[Row]:
    try:
        import jax
    except Exception as exc:  # noqa: BLE001 - any import failure is the finding
        return [Row("jax", "fail", f"cannot import jax: {_one_line(exc)}",
                    "reinstall: pip install -r requirements.txt")]
    try:
        devices = jax.devices()
        backend = jax.default_backend()
    except Exception as exc:  # noqa: BLE001
        return [Row("jax", "fail", f"jax {jax.__version__} has no working backend: {_one_line(exc)}",
                    "check JAX_PLATFORMS and the jax/jaxlib install (pip install -U jax)")]
    rows = [Row("jax", "ok", f"jax {jax.__version__}, backend {backend}, {len(devices)} device(s)")]
    for device in devices:
        memory = ""
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001 - not every backend reports memory
            stats = {}
        if "bytes_limit" in stats:
            memory = f", {_gib(stats['bytes_limit'])} usable"
        rows.append(Row(f"  device {device.id}", "ok", f"{device.platform} {device.device_kind}{memory}"))
    if backend == "cpu":
        rows.append(Row("accelerator", "warn",
                        "no GPU/TPU visible to JAX: training and serving run on the CPU (tiny presets only, bf16 is "
                        "upcast)", "on a CUDA machine: pip install -U 'jax[cuda12]'"))
    return rows


def check_torch_lerobot() -> list[Row]:
    rows = []
    lerobot = _version("lerobot")
    torch = _version("torch")
    if lerobot is None:
        rows.append(Row("lerobot", "fail", "lerobot is not installed (datasets are read and written with it)",
                        "pip install -r requirements.txt"))
    else:
        rows.append(Row("lerobot", "ok", f"lerobot {lerobot}"))
    if torch is None:
        rows.append(Row("torch", "fail", "torch is not installed (LeRobot needs it)",
                        "pip install -r requirements.txt"))
        return rows
    cuda_dists = sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                        if (d.metadata["Name"] or "").lower().startswith("nvidia-"))
    detail = f"torch {torch}"
    if cuda_dists:
        size = _dists_size(cuda_dists)
        detail += f", with {len(cuda_dists)} CUDA wheels ({_gib(size)})"
        if not _has_nvidia_gpu():
            rows.append(Row("torch", "warn", detail + " on a machine without an NVIDIA GPU",
                            "pi0 needs no CUDA torch on a CPU machine: pip install torch --index-url "
                            "https://download.pytorch.org/whl/cpu before `pip install -r requirements.txt`"))
            return rows
    rows.append(Row("torch", "ok", detail))
    return rows


def _dists_size(names: Iterable[str]) -> int:
    total = 0
    for name in names:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in files:
            try:
                total += os.path.getsize(file.locate())
            except OSError:
                pass
    return total


def _has_nvidia_gpu() -> bool:
    return Path("/proc/driver/nvidia").exists() or Path("/dev/nvidia0").exists()


def check_plugin_checks(registry: Registry) -> list[Row]:
    """The rows of every plugin's doctor checks (what a simulator needs of the host, say), in plugin order."""
    try:
        checks = registry.doctor_checks
    except Exception as exc:  # noqa: BLE001 - a broken plugin is a finding
        return [Row("plugin checks", "warn", f"plugin doctor checks failed to load: {_one_line(exc)}",
                    "fix or disable the plugin named above (PI0_DISABLE_PLUGINS=NAME)")]
    rows: list[Row] = []
    for key, check in checks.items():
        plugin = key.split("/", 1)[0]
        try:
            rows.extend(check.run())
        except Exception as exc:  # noqa: BLE001 - the plugin's bug, reported as its row
            rows.append(Row(check.name, "warn", f"plugin {plugin}'s check failed: {_one_line(exc)}",
                            f"report it to the plugin, or disable it with PI0_DISABLE_PLUGINS={plugin}"))
    return rows


def check_simulators(registry: Registry) -> list[Row]:
    """Each registered simulator: its packages installed, and what its rendering needs (its own words)."""
    try:
        simulators = registry.simulators
    except Exception as exc:  # noqa: BLE001 - a broken simulator plugin is a finding
        return [Row("simulators", "warn", f"simulators failed to load: {_one_line(exc)}",
                    "fix or disable the plugin named above (PI0_DISABLE_PLUGINS=NAME)")]
    rows = []
    for name, simulator in simulators.items():
        versions = {dist: _version(dist) for dist in simulator.packages}
        missing = [dist for dist, version in versions.items() if version is None]
        found = ", ".join(f"{dist} {version}" for dist, version in versions.items() if version) or "no packages named"
        if missing:
            rows.append(Row(f"simulator {name}", "warn", f"{simulator.embodiment}: {', '.join(missing)} not installed",
                            f"pip install {' '.join(missing)}"))
        else:
            rows.append(Row(f"simulator {name}", "ok", f"{simulator.embodiment}: {found}"
                            + (f"; needs {simulator.rendering}" if simulator.rendering else "")))
    return rows


def check_video(codec: str = "libsvtav1") -> list[Row]:
    """Encode a few frames the way LeRobot's writer does (AV1 in mp4 through PyAV) and decode them back."""
    try:
        import av
        import numpy as np
        from av.video.stream import VideoStream
    except Exception as exc:  # noqa: BLE001
        return [Row("video", "fail", f"cannot import PyAV: {_one_line(exc)}", "pip install -r requirements.txt")]
    # SVT-AV1 prints its banner and a thread-priority warning to stderr itself; it reads SVT_LOG (1: errors
    # only) when an encoder starts.
    if os.environ.get("PI0_VERBOSE", "").strip() in ("", "0"):
        os.environ.setdefault("SVT_LOG", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.mp4"
        try:
            av.logging.set_level(av.logging.ERROR)  # the encoders' info lines are not findings
            with keep_scheduling(), av.open(str(path), "w") as container:  # SVT-AV1 asks for real-time priority
                stream = container.add_stream(codec, rate=10)
                assert isinstance(stream, VideoStream)
                stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
                for i in range(4):
                    frame = np.full((64, 64, 3), 40 * i, dtype=np.uint8)
                    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
        except Exception as exc:  # noqa: BLE001
            return [Row("video encode", "fail", f"PyAV {av.__version__} cannot encode {codec}: {_one_line(exc)}",
                        "reinstall PyAV with its bundled FFmpeg: pip install --force-reinstall av")]
        rows.append(Row("video encode", "ok", f"PyAV {av.__version__} encodes {codec} (LeRobot's dataset codec)"))
        try:
            with av.open(str(path)) as container:
                decoded = sum(1 for _ in container.decode(video=0))
        except Exception as exc:  # noqa: BLE001
            decoded, error = 0, _one_line(exc)
        else:
            error = f"{decoded} of 4 frames came back"
        if decoded != 4:
            rows.append(Row("video decode", "fail", f"PyAV cannot decode its own {codec} video: {error}",
                            "reinstall PyAV with its bundled FFmpeg: pip install --force-reinstall av"))
        else:
            rows.append(Row("video decode", "ok", f"PyAV decodes {codec}"))
    return rows


def check_plugins(registry: Registry) -> list[Row]:
    from pi0cli.plugins.manager import DISABLE_ENV, LOAD_ENV

    rows = []
    if not registry.plugins:
        selection = os.environ.get(LOAD_ENV)
        why = f" ({LOAD_ENV}={selection!r})" if selection is not None else ""
        rows.append(Row("plugins", "warn", f"no robot plugin loaded{why}: no embodiment is available",
                        "pip install -r requirements.txt installs the built-in robots"
                        + (f"; unset {LOAD_ENV}" if selection is not None else "")))
        return rows
    for plugin in registry.plugins:
        if plugin.error is None:
            rows.append(Row(f"plugin {plugin.name}", "ok",
                            f"{plugin.label}: {', '.join(plugin.embodiments) or 'no embodiments'}"))
        else:
            rows.append(Row(f"plugin {plugin.name}", "warn", f"{plugin.label} failed to load: {plugin.error}",
                            f"fix or uninstall it, or disable it with {DISABLE_ENV}={plugin.name}"))
    return rows


def cache_directories(env: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Where pi0 and its libraries read and write caches (the environment's overrides applied)."""
    from pi0cli.data.lerobot import lerobot_home
    from pi0cli.downloads import cache_dir, hf_home, openpi_cache_dir

    env = os.environ if env is None else env
    dirs = {"HF_HOME": hf_home(env), "HF_LEROBOT_HOME": lerobot_home(env), "PI0_CACHE_DIR": cache_dir(env),
            "OPENPI_DATA_HOME": openpi_cache_dir(env)}
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        dirs["JAX_COMPILATION_CACHE_DIR"] = Path(env["JAX_COMPILATION_CACHE_DIR"])
    return dirs


def check_caches(env: Mapping[str, str] | None = None) -> list[Row]:
    rows = []
    for name, path in cache_directories(env).items():
        if path.is_dir():
            writable = os.access(path, os.W_OK)
            rows.append(Row(f"cache {name}", "ok" if writable else "warn",
                            f"{path}" + ("" if writable else " (not writable)"),
                            "" if writable else f"make {path} writable or point {name} elsewhere"))
        else:
            parent = next((p for p in path.parents if p.exists()), Path("/"))
            creatable = os.access(parent, os.W_OK)
            rows.append(Row(f"cache {name}", "info" if creatable else "warn",
                            f"{path} (not created yet" + ("" if creatable else f"; {parent} is not writable") + ")",
                            "" if creatable else f"point {name} at a writable directory"))
    return rows


def check_network(host: str = "huggingface.co", timeout: float = 3.0,
                  env: Mapping[str, str] | None = None) -> list[Row]:
    """Offline switches and whether the Hugging Face Hub answers (datasets and checkpoints by repo id)."""
    from pi0cli.downloads import OFFLINE_ENV, offline

    env = os.environ if env is None else env
    # pi0's own switch (downloads.offline, one definition), plus the datasets library's, which it reads itself.
    switches = [k for k in (*OFFLINE_ENV, "HF_DATASETS_OFFLINE") if offline({"PI0_OFFLINE": env.get(k, "")})]
    if switches:
        return [Row("network", "info", f"offline ({', '.join(switches)}=1): only local datasets and checkpoints")]
    reachable = _reachable(host, 443, timeout)
    if reachable:
        return [Row("network", "ok", f"online: {host} answers")]
    return [Row("network", "info", f"{host} does not answer within {timeout:g} s: use local dataset roots and "
                                   "checkpoint directories", "set HF_HUB_OFFLINE=1 to skip hub look-ups")]


def _reachable(host: str, port: int, timeout: float) -> bool:
    # DNS resolution ignores socket timeouts; a daemon thread bounds the whole attempt.
    result: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def run_checks(registry: Registry, *, network: bool = True,
               on_check: Callable[[str], None] | None = None) -> list[Row]:
    """Every check, in the order of the table; ``on_check(name)`` is called before each (for a spinner)."""
    checks: list[tuple[str, Callable[[], list[Row]]]] = [
        ("python", check_python), ("pi0", check_pi0), ("jax", check_jax), ("torch and lerobot", check_torch_lerobot),
        ("video", check_video), ("plugins", lambda: check_plugins(registry)),
        ("simulators", lambda: check_simulators(registry)), ("plugin checks", lambda: check_plugin_checks(registry)),
        ("caches", check_caches),
    ]
    if network:
        checks.append(("network", check_network))
    rows: list[Row] = []
    for name, check in checks:
        if on_check is not None:
            on_check(name)
        try:
            rows.extend(check())
        except Exception as exc:  # noqa: BLE001 - a crashing check is itself a finding, not a doctor crash
            rows.append(Row(name, "fail", f"the check itself failed: {_one_line(exc)}",
                            "run with PI0_DEBUG=1 and report it"))
            if os.environ.get("PI0_DEBUG"):
                raise
    return rows


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
