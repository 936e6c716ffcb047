"""The jaxpr -> ONNX converter, one primitive family at a time, against JAX on random inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
ort = pytest.importorskip("onnxruntime")
jnp = jax.numpy


def _run(fn, args, tmp_path: Path, weights: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """``fn(*args)`` by JAX and by the converted graph (arguments at ``weights`` become initializers)."""
    import onnx

    from pi0cli.export.onnx_graph import Weight, WeightFile, convert

    closed = jax.make_jaxpr(fn)(*args)
    specs = [Weight(f"w{i}", np.asarray(a)) if i in weights else f"x{i}" for i, a in enumerate(args)]
    file = WeightFile(tmp_path / "weights.bin")
    model = convert(closed, inputs=specs, outputs=["y"], weights=file)
    file.close()
    onnx.save(model, str(tmp_path / "m.onnx"))
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    feed = {f"x{i}": np.asarray(a) for i, a in enumerate(args) if i not in weights}
    return np.asarray(fn(*args)), session.run(["y"], feed)[0]


RNG = np.random.default_rng(0)


def _f32(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


CASES = {
    "dot_general with batch dims": (lambda q, k: jnp.einsum("btnh,bsnh->bnts", q, k),
                                    (_f32(2, 3, 4, 5), _f32(2, 6, 4, 5))),
    "dot_general over two axes": (lambda x, w: jnp.einsum("btnh,nhd->btd", x, w), (_f32(2, 3, 4, 5), _f32(4, 5, 7))),
    "broadcast, cumsum, compare": (lambda m: (jnp.cumsum(m, axis=1)[:, None, :] <= jnp.cumsum(m, axis=1)[:, :, None]
                                              ).astype(jnp.float32), (RNG.integers(0, 2, (2, 6)).astype(np.int32),)),
    "softmax, rsqrt, integer_pow, tanh": (
        lambda x: jax.nn.softmax(x, axis=-1) * jax.lax.rsqrt(jnp.mean(x**2, -1, keepdims=True) + 1e-6)
        + jax.nn.gelu(x, approximate=True), (_f32(3, 8),)),
    "split, unstack, stack, concatenate, slice": (
        lambda x: jnp.concatenate([jnp.stack(list(x)[::-1], axis=0), *jnp.split(x, [1], axis=0)], axis=0)[1:5:2],
        (_f32(3, 2),)),
    "select_n and sin/cos": (lambda x: jnp.where(x > 0, jnp.sin(x), jnp.cos(x)), (_f32(4, 4),)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_primitive_matches_jax(case, tmp_path):
    fn, args = CASES[case]
    expected, got = _run(fn, args, tmp_path)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_embedding_lookup_with_the_table_as_an_external_weight(tmp_path):
    table, ids = _f32(20, 4), np.array([[1, 19, 0]], np.int32)
    expected, got = _run(lambda t, i: t[(i,)] * 2.0, (table, ids), tmp_path, weights=(0,))
    np.testing.assert_array_equal(got, expected)
    assert (tmp_path / "weights.bin").stat().st_size >= table.nbytes


def test_loops_are_refused_by_name(tmp_path):
    from pi0cli.export.onnx_graph import OnnxExportError

    def loop(x):
        return jax.lax.fori_loop(0, 3, lambda i, c: c * 2.0, x)

    with pytest.raises(OnnxExportError, match="'(while|scan)' loop; the exporter unrolls loops"):
        _run(loop, (_f32(2),), tmp_path)
