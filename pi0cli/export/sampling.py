"""The function every export format traces: prepared model inputs + noise -> actions, the flow loop unrolled.

Graph choice: one graph holding the prefix pass and every Euler step (the loop unrolled at trace time), not a
prefix graph plus a denoise-step graph driven from the runtime. The split would hand the prefix KV cache
(``[depth, B, S, K, H]`` keys and values, 2 x 7.5 M floats for the full model at batch 1) out of and back into
the runtime on every step, and each step would be a separate session call; in one graph the cache never
leaves the runtime's memory and ONNX Runtime / TensorRT plan the whole chunk at once. The price is a graph
whose action-expert nodes repeat ``num_steps`` times (weights are shared initializers, so size barely grows)
and a step count fixed at export (recorded in the manifest).

The model is rebuilt for tracing with ``scan=False`` (layers unrolled over the same stacked weights), no
remat, attention in one chunk and the MLP whole: the traced program then has no loop primitives at all.
Sampling noise is an input, so the exported graph and the JAX model can be run on the same noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pi0cli.models.config import Pi0Config
from pi0cli.models.observation import Observation
from pi0cli.models.params import build_any_model, export_params
from pi0cli.models.pi0 import Pi0

#: ONNX/StableHLO input names of the prepared model batch (``/`` joins nested keys: ``image/base_0_rgb``).
NOISE = "noise"
ACTIONS = "actions"


def euler_times(num_steps: int) -> list[float]:
    """The times ``Pi0.sample_actions`` evaluates the velocity at, in its own float32 arithmetic."""
    dt = -1.0 / num_steps
    time, times = np.float32(1.0), []
    while time >= -dt / 2:
        times.append(float(time))
        time = np.float32(time + dt)
    return times


def tracing_config(config: Pi0Config, dtype: Literal["float32", "bfloat16"]) -> Pi0Config:
    """``config`` rebuilt for tracing: layers unrolled, attention and MLP unchunked, compute in ``dtype``."""
    param_dtype: Literal["float32", "bfloat16"] = "float32" if dtype == "float32" else "bfloat16"
    big = 1 << 30
    return dataclasses.replace(config, scan=False, remat=False, remat_llm=None, remat_vision=None,
                               attention_impl="chunked", attention_chunk=big, mlp_chunk=None, dtype=dtype,
                               param_dtype=param_dtype)


def tracing_model(model: Any, dtype: Literal["float32", "bfloat16"]) -> Pi0:
    """The same weights in a module built by :func:`tracing_config` (``dtype``: float32 or bfloat16)."""
    params = jax.tree.map(np.asarray, export_params(model))
    rebuilt = build_any_model(tracing_config(model.config, dtype), params)
    assert isinstance(rebuilt, Pi0)
    return rebuilt


def batch_spec(config: Pi0Config, batch_size: int) -> dict[str, Any]:
    """Abstract prepared model inputs (what :func:`pi0cli.policy.policy.make_transforms` produces, stacked)."""
    b = batch_size
    h, w = config.image_resolution
    return {
        "image": {k: jax.ShapeDtypeStruct((b, h, w, 3), np.uint8) for k in config.image_keys},
        "image_mask": {k: jax.ShapeDtypeStruct((b,), np.bool_) for k in config.image_keys},
        "state": jax.ShapeDtypeStruct((b, config.action_dim), np.float32),
        "tokenized_prompt": jax.ShapeDtypeStruct((b, config.token_len), np.int32),
        "tokenized_prompt_mask": jax.ShapeDtypeStruct((b, config.token_len), np.bool_),
    }


def noise_spec(config: Pi0Config, batch_size: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch_size, config.action_horizon, config.action_dim), np.float32)


def sampler(model: Pi0, num_steps: int) -> tuple[Callable[..., jax.Array], Any]:
    """``(fn(state, batch, noise) -> actions [B, H, A], state)``: the model's weights are ``fn``'s first argument.

    The same arithmetic as ``Pi0.sample_actions`` with the KV cache and without real-time chunking.
    """
    graphdef, state = nnx.split(model)
    dt = -1.0 / num_steps
    times = euler_times(num_steps)

    def fn(state: Any, batch: dict[str, Any], noise: jax.Array) -> jax.Array:
        module = nnx.merge(graphdef, state)
        obs = module.preprocess(None, Observation.from_dict(batch), False)  # the model's own rules (state_input)
        prefix_mask, kv_cache = module.prefill(obs)
        x_t = noise.astype(jnp.float32)
        for time in times:
            # The model's cached velocity: the one step sample_actions' loop body takes.
            v_t = module._velocity_cached(obs, prefix_mask, kv_cache, x_t, jnp.asarray(time, jnp.float32))
            x_t = x_t + dt * v_t
        return x_t

    return fn, state


def leaf_names(tree: Any, prefix: str = "") -> list[str]:
    """``/``-joined key paths of ``tree``'s leaves, in flattening order."""
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        names.append(prefix + "/".join(parts))
    return names


def reference_actions(model: Any, batch: dict[str, Any], noise: np.ndarray, num_steps: int) -> np.ndarray:
    """The JAX model's own ``sample_actions`` (its while loop, KV cache) on prepared ``batch`` and ``noise``."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state: Any, batch: dict[str, Any], noise: jax.Array) -> jax.Array:
        module = nnx.merge(graphdef, state)
        return module.sample_actions(None, Observation.from_dict(batch), num_steps=num_steps, noise=noise)

    return np.asarray(run(state, batch, noise))
