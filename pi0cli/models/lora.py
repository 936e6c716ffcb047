"""LoRA-augmented projections (NNX), with the reference parameter names.

``Einsum`` holds ``w`` and, with LoRA, ``lora_a``/``lora_b``: the adapters factor the last two axes of ``w``
(``w[..., i, o]`` gets ``a[..., i, r] @ b[..., r, o]``), scaled by ``alpha / rank``.
``FeedForward`` is the GeGLU MLP with ``gating_einsum [2, D, F]`` and ``linear [F, D]`` and, with LoRA,
``{gating_einsum,linear}_lora_{a,b}`` whose update is added unscaled (as the reference does); with ``chunk``
it runs over token chunks, each rematerialised, so its ``[B, T, hidden]`` activations are never all live.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from pi0cli.models.config import LoRAConfig

Initializer = Callable[..., jax.Array]

_LORA_INIT = jax.nn.initializers.normal(stddev=0.01)  # both factors random, as the reference (B is not zero)


def _lecun(**axes) -> Initializer:
    """Fan-in scaled plain normal (not truncated: much cheaper to compile on CPU; weights are loaded anyway)."""
    return jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", **axes)


def _lora_equations(eqn: str) -> tuple[str, str]:
    """Split ``"x,w->y"`` into the two LoRA contractions through a rank letter.

    The weight's last two letters are (input, output); ``a`` replaces output by the rank letter, ``b`` the input.
    """
    inputs, out = eqn.split("->")
    lhs, w = inputs.split(",")
    rank = next(c for c in "rRLZ" if c not in eqn)
    w_out = w[-1]
    mid = out.replace(w_out, rank)
    return f"{lhs},{w[:-1]}{rank}->{mid}", f"{mid},{w[:-2]}{rank}{w_out}->{out}"


class Einsum(nnx.Module):
    """``y = einsum(eqn, x, w)`` plus an optional low-rank update. ``w`` has ``shape``."""

    def __init__(
        self,
        eqn: str,
        shape: tuple[int, ...],
        *,
        init: Initializer,
        lora: LoRAConfig | None,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        self.eqn = eqn
        self.w = nnx.Param(init(rngs.params(), shape, param_dtype))
        self.lora_scaling = None
        if lora is not None:
            self.eqn_a, self.eqn_b = _lora_equations(eqn)
            shape_a = (*shape[:-1], lora.rank)
            shape_b = (*shape[:-2], lora.rank, shape[-1])
            self.lora_a = nnx.Param(_LORA_INIT(rngs.params(), shape_a, param_dtype))
            self.lora_b = nnx.Param(_LORA_INIT(rngs.params(), shape_b, param_dtype))
            self.lora_scaling = lora.scaling

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        y = jnp.einsum(self.eqn, x, self.w[...].astype(dtype))
        if self.lora_scaling is not None:
            low = jnp.einsum(self.eqn_a, x, self.lora_a[...].astype(dtype))
            y = y + jnp.einsum(self.eqn_b, low, self.lora_b[...].astype(dtype)) * self.lora_scaling
        return y


class FeedForward(nnx.Module):
    """GeGLU MLP: ``linear(gelu_tanh(x @ W_gate) * (x @ W_up))``; x ``[..., D]`` -> ``[..., D]``."""

    def __init__(
        self,
        width: int,
        hidden: int,
        *,
        lora: LoRAConfig | None,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        chunk: int | None = None,
    ):
        self.chunk = chunk
        gate_init = _lecun(in_axis=-2, out_axis=-1, batch_axis=(0,))
        lin_init = _lecun(in_axis=-2, out_axis=-1)
        self.gating_einsum = nnx.Param(gate_init(rngs.params(), (2, width, hidden), param_dtype))
        self.linear = nnx.Param(lin_init(rngs.params(), (hidden, width), param_dtype))
        self.has_lora = lora is not None
        if lora is not None:
            r = lora.rank
            self.gating_einsum_lora_a = nnx.Param(_LORA_INIT(rngs.params(), (2, width, r), param_dtype))
            self.gating_einsum_lora_b = nnx.Param(_LORA_INIT(rngs.params(), (2, r, hidden), param_dtype))
            self.linear_lora_a = nnx.Param(_LORA_INIT(rngs.params(), (hidden, r), param_dtype))
            self.linear_lora_b = nnx.Param(_LORA_INIT(rngs.params(), (r, width), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        t = x.shape[-2] if x.ndim >= 2 else 1
        if self.chunk is None or t <= self.chunk:
            return self._mlp(x)
        pieces = -(-t // self.chunk)
        size = -(-t // pieces)
        pad = pieces * size - t
        xp = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, pad), (0, 0)])
        xc = jnp.moveaxis(xp.reshape(*x.shape[:-2], pieces, size, x.shape[-1]), -3, 0)
        out = jax.lax.map(jax.checkpoint(self._mlp), xc)
        out = jnp.moveaxis(out, 0, -3).reshape(*x.shape[:-2], pieces * size, -1)
        return out[..., :t, :]

    def _mlp(self, x: jax.Array) -> jax.Array:
        dt = x.dtype
        w = self.gating_einsum[...].astype(dt)
        gate, up = jnp.dot(x, w[0]), jnp.dot(x, w[1])
        if self.has_lora:
            a, b = self.gating_einsum_lora_a[...].astype(dt), self.gating_einsum_lora_b[...].astype(dt)
            gate = gate + jnp.dot(jnp.dot(x, a[0]), b[0])
            up = up + jnp.dot(jnp.dot(x, a[1]), b[1])
        hidden = jax.nn.gelu(gate, approximate=True) * up
        out = jnp.dot(hidden, self.linear[...].astype(dt))
        if self.has_lora:
            a, b = self.linear_lora_a[...].astype(dt), self.linear_lora_b[...].astype(dt)
            out = out + jnp.dot(jnp.dot(hidden, a), b)
        return out
