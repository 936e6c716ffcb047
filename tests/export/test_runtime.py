"""`pi0cli.runtime`: the ONNX artifact runs without JAX, acts as the JAX policy does, and refuses a damaged or
foreign artifact with one clear error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from obs_helpers import sim_obs

pytest.importorskip("onnxruntime")

TESTS = Path(__file__).resolve().parents[1]

_NO_JAX = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from obs_helpers import sim_obs
from pi0cli.plugins.manager import get_registry
from pi0cli.runtime import load_artifact, read_manifest

# As `pi0 serve --artifact` does: the robot the manifest names, from the plugin registry.
robot = get_registry().embodiment(read_manifest({artifact!r})["embodiment"])
policy = load_artifact({artifact!r}, embodiment=robot)
policy.warmup()
actions = [policy.infer(sim_obs(i))["actions"] for i in range(3)]
np.save({out!r}, np.stack(actions))
heavy = sorted(m for m in ("jax", "jaxlib", "flax", "orbax") if m in sys.modules)
assert not heavy, f"the runtime imported {{heavy}}"
print("no jax")
"""


def test_runtime_imports_no_jax_and_acts_as_the_jax_policy(onnx_artifact, tiny_checkpoints, aloha_sim, tmp_path):
    from pi0cli.policy.load import load_policy

    out = tmp_path / "actions.npy"
    script = _NO_JAX.format(tests=str(TESTS), artifact=str(onnx_artifact), out=str(out))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "no jax" in done.stdout, done.stderr[-3000:]
    exported = np.load(out)
    reference = load_policy(tiny_checkpoints["pi0_tiny"], embodiment=aloha_sim)
    expected = np.stack([reference.infer(sim_obs(i))["actions"] for i in range(3)])
    assert exported.shape == (3, 10, 14)
    # Same seed, same call counter: the same noise, so the same actions (different noise would differ by ~1).
    np.testing.assert_allclose(exported, expected, rtol=0, atol=1e-4)


def test_artifact_policy_is_a_served_policy_without_rtc(onnx_artifact, aloha_sim):
    from pi0cli.policy.rtc import RTCRequestError
    from pi0cli.runtime import load_artifact
    from pi0cli.serving.served import ServedPolicy, describe_missing

    policy = load_artifact(onnx_artifact, embodiment=aloha_sim)
    assert isinstance(policy, ServedPolicy) and describe_missing(policy) == [] and policy.max_batch == 1
    with pytest.raises(RTCRequestError, match="does not support real-time chunking"):
        policy.infer({**sim_obs(0), "prev_actions": np.zeros((5, 14), np.float32)})


def _damaged(artifact: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy)
    return copy


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _other_version(path: Path) -> None:
    manifest = json.loads((path.parent / "manifest.json").read_text())
    manifest["format"] = "pi0-artifact/99"
    (path.parent / "manifest.json").write_text(json.dumps(manifest))


DAMAGE = {
    "corrupted": (_corrupt, "does not match its sha256 checksum \\(corrupted\\)"),
    "truncated": (_truncate, "bytes but the manifest says .* \\(truncated or replaced\\)"),
    "version mismatch": (_other_version, "is artifact format 'pi0-artifact/99' but this pi0 reads 'pi0-artifact/1'"),
    "missing external data": (Path.unlink, "lacks its external-data file of the ONNX graph weights.bin"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_artifact_is_one_clear_error(damage, onnx_artifact, aloha_sim, tmp_path):
    from pi0cli.runtime import ArtifactError, load_artifact

    artifact = _damaged(onnx_artifact, tmp_path)
    harm, message = DAMAGE[damage]
    harm(artifact / "weights.bin")
    with pytest.raises(ArtifactError, match=message):
        load_artifact(artifact, embodiment=aloha_sim)


def test_damaged_artifact_through_pi0_serve_is_one_red_line(onnx_artifact, tmp_path, pi0_exe):
    artifact = _damaged(onnx_artifact, tmp_path)
    (artifact / "weights.bin").unlink()
    done = subprocess.run([pi0_exe, "serve", "--artifact", str(artifact), "--port", "0"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "lacks its external-data file" in lines[0] and "Traceback" not in done.stderr


def test_another_robot_does_not_fit_the_artifact(onnx_artifact):
    from pi0_embodiment_aloha import ALOHA
    from pi0cli.runtime import ArtifactError, load_artifact

    with pytest.raises(ArtifactError, match="does not match the artifact's contract: name 'aloha_sim'"):
        load_artifact(onnx_artifact, embodiment=ALOHA)
