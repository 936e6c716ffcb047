"""A Gemma transformer whose experts share one joint attention (Flax NNX).

Each token stream (expert) has its own weights; per layer the q/k/v of all streams are concatenated along the
sequence for one attention, then split back. Expert 0 (the VLM) owns the embedder; expert ``i > 0`` has the
suffix ``_i`` on every parameter name, as in the reference tree (``q_einsum_1``, ``mlp_1``, ``final_norm_1``...).
Layers keep their weights stacked on a leading depth axis and run under ``lax.scan`` (or a Python loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pi0cli.models.config import AttentionImpl, GemmaConfig, RematPolicy
from pi0cli.models.lora import Einsum, FeedForward, _lecun

#: Additive mask value of the reference (a large negative bfloat16-representable number, not -inf: no NaNs).
MASK_VALUE = -2.3819763e38

KVCache = tuple[jax.Array, jax.Array]  # (k, v), each [depth, B, S, num_kv_heads, head_dim]; k after RoPE


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Plain attention, float32 scores: q ``[B, T, K, G, H]``, k/v ``[B, S, K, H]``, mask ``[B, T, S]``."""
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :, :], logits, MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    *,
    impl: AttentionImpl = "chunked",
    chunk: int = 128,
) -> jax.Array:
    """Softmax attention of pre-scaled ``q [B, T, N, H]`` over ``k, v [B, S, K, H]`` (``N`` a multiple of ``K``:
    grouped queries), boolean ``mask [B, T, S]`` or None -> ``[B, T, N, H]``.

    "chunked" runs query chunks of about ``chunk`` tokens under ``lax.map``, each rematerialised in the
    backward pass, so only one chunk's float32 scores ``[B, N, chunk, S]`` are ever live (forward or backward);
    each query row sees the same math as the whole-matrix form. "xla" and "cudnn" are
    ``jax.nn.dot_product_attention``'s implementations (cuDNN: the fused flash kernel, GPU and bf16 only).
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    if impl in ("xla", "cudnn"):
        m = None if mask is None else mask[:, None, :, :]
        return jax.nn.dot_product_attention(q, k, v, mask=m, scale=1.0, implementation=impl)
    qg = q.reshape(b, t, kv_heads, n // kv_heads, h)
    if t <= chunk:
        return _attend(qg, k, v, mask).reshape(b, t, n, h)
    pieces = -(-t // chunk)
    size = -(-t // pieces)  # balanced chunks: 867 tokens -> 7 x 124, not 7 x 128
    pad = pieces * size - t
    qg = jnp.pad(qg, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
    q_chunks = jnp.moveaxis(qg.reshape(b, pieces, size, *qg.shape[2:]), 1, 0)
    attend = jax.checkpoint(_attend)
    if mask is None:
        out = jax.lax.map(lambda qc: attend(qc, k, v, None), q_chunks)
    else:
        # Padded query rows see nothing (uniform softmax); they are sliced off below.
        m = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))
        m_chunks = jnp.moveaxis(m.reshape(b, pieces, size, m.shape[-1]), 1, 0)
        out = jax.lax.map(lambda xs: attend(xs[0], k, v, xs[1]), (q_chunks, m_chunks))
    out = jnp.moveaxis(out, 0, 1).reshape(b, pieces * size, n, h)
    return out[:, :t]


def suffix(i: int) -> str:
    """Parameter-name suffix of expert ``i`` (``""`` for the VLM, ``"_1"`` for the action expert)."""
    return "" if i == 0 else f"_{i}"


def rms_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``x / sqrt(mean(x^2) + eps)`` in float32 over the last axis."""
    x = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(var + eps)


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
    """Rotary embedding, split-halves convention: x ``[B, T, N, H]``, positions ``[B, T]`` -> ``[B, T, N, H]``.

    Channel pair ``(i, i + H/2)`` rotates by ``pos / max_wavelength^(2i/H)``; computed in float32.
    """
    half = x.shape[-1] // 2
    timescale = max_wavelength ** (2.0 * jnp.arange(half, dtype=jnp.float32) / x.shape[-1])
    radians = positions[..., None].astype(jnp.float32) / timescale  # [B, T, H/2]
    radians = radians[..., None, :]  # broadcast over heads
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm with ``(1 + scale)``; with ``cond_dim`` it is adaRMS: ``Dense_0(cond)`` gives (scale, shift, gate).

    Returns ``(y, gate)``; ``gate`` is None without conditioning. The Dense is zero-initialised so an adaRMS
    layer starts as a plain RMSNorm whose residual branch is gated shut.
    """

    def __init__(self, width: int, *, cond_dim: int | None = None, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.adaptive = cond_dim is not None
        if cond_dim is not None:
            self.Dense_0 = nnx.Linear(
                cond_dim, 3 * width, kernel_init=nnx.initializers.zeros, param_dtype=param_dtype, rngs=rngs
            )
        else:
            self.scale = nnx.Param(jnp.zeros((width,), param_dtype))

    def __call__(self, x: jax.Array, cond: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        normed = rms_norm(x)
        if not self.adaptive:
            return (normed * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype), None
        if cond is None:
            raise ValueError("this adaRMS norm needs its conditioning vector")
        mod = self.Dense_0(cond.astype(jnp.float32))[:, None, :]  # [B, 1, 3D]
        scale, shift, gate = jnp.split(mod.astype(jnp.float32), 3, axis=-1)
        return (normed * (1.0 + scale) + shift).astype(x.dtype), gate.astype(x.dtype)


class Embedder(nnx.Module):
    """Token embedding table ``input_embedding [V, D]``; ``encode`` scales by ``sqrt(D)``."""

    def __init__(self, vocab_size: int, width: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(stddev=1.0)
        self.input_embedding = nnx.Param(init(rngs.params(), (vocab_size, width), param_dtype))

    def encode(self, ids: jax.Array) -> jax.Array:
        """ids ``[B, T]`` int -> ``[B, T, D]`` (in the table's dtype)."""
        table = self.input_embedding[...]
        x = table[(ids,)]
        return x * jnp.sqrt(jnp.asarray(table.shape[-1], jnp.float32)).astype(x.dtype)


class Attention(nnx.Module):
    """Joint multi-query attention over several token streams, each with its own q/kv/out projections."""

    def __init__(
        self,
        configs: Sequence[GemmaConfig],
        *,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        impl: AttentionImpl = "chunked",
        chunk: int = 128,
    ):
        c0 = configs[0]
        self.impl, self.chunk = impl, chunk
        self.num_heads, self.num_kv_heads, self.head_dim = c0.num_heads, c0.num_kv_heads, c0.head_dim
        self.num_experts = len(configs)
        n, k, h = c0.num_heads, c0.num_kv_heads, c0.head_dim
        for i, c in enumerate(configs):
            s = suffix(i)
            q_init = _lecun(in_axis=-2, out_axis=-1, batch_axis=(0,))
            kv_init = _lecun(in_axis=-2, out_axis=-1, batch_axis=(0, 1))
            o_init = _lecun(in_axis=(-3, -2), out_axis=-1)
            def einsum(eqn: str, shape: tuple[int, ...], init: Callable, c: GemmaConfig = c) -> Einsum:
                return Einsum(eqn, shape, init=init, lora=c.attn_lora, param_dtype=param_dtype, rngs=rngs)

            setattr(self, f"q_einsum{s}", einsum("BTD,NDH->BTNH", (n, c.width, h), q_init))
            setattr(self, f"kv_einsum{s}", einsum("BSD,CKDH->CBSKH", (2, k, c.width, h), kv_init))
            setattr(self, f"attn_vec_einsum{s}", einsum("BTNH,NHD->BTD", (n, h, c.width), o_init))

    def __call__(
        self,
        xs: Sequence[jax.Array | None],
        positions: jax.Array,
        mask: jax.Array,
        kv_cache: KVCache | None = None,
    ) -> tuple[list[jax.Array | None], KVCache]:
        """xs: per expert ``[B, T_i, D_i]`` or None; positions ``[B, T]``, mask ``[B, T, S]`` with ``T = sum T_i``
        and ``S = S_cache + T``. Returns per-expert outputs and the (k, v) attended over (cache included)."""
        qs, ks, vs = [], [], []
        for i, x in enumerate(xs):
            if x is None:
                continue
            s = suffix(i)
            qs.append(getattr(self, f"q_einsum{s}")(x))
            k, v = getattr(self, f"kv_einsum{s}")(x)
            ks.append(k)
            vs.append(v)
        q, k, v = (jnp.concatenate(a, axis=1) for a in (qs, ks, vs))
        q = apply_rope(q, positions) * jnp.asarray(self.head_dim**-0.5, q.dtype)  # scale after RoPE
        k = apply_rope(k, positions)
        if kv_cache is not None:
            k = jnp.concatenate([kv_cache[0].astype(k.dtype), k], axis=1)
            v = jnp.concatenate([kv_cache[1].astype(v.dtype), v], axis=1)

        b, t = q.shape[:2]
        if mask.shape != (b, t, k.shape[1]):
            raise ValueError(f"attention mask has shape {mask.shape}, expected {(b, t, k.shape[1])}")
        encoded = dot_product_attention(q, k, v, mask, impl=self.impl, chunk=self.chunk)

        outs: list[jax.Array | None] = []
        start = 0
        for i, x in enumerate(xs):
            if x is None:
                outs.append(None)
                continue
            end = start + x.shape[1]
            outs.append(getattr(self, f"attn_vec_einsum{suffix(i)}")(encoded[:, start:end]))
            start = end
        return outs, (k, v)


class Block(nnx.Module):
    """One pre-norm transformer layer of the mixture."""

    def __init__(
        self,
        configs: Sequence[GemmaConfig],
        cond_dims: Sequence[int | None],
        *,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        attention_impl: AttentionImpl = "chunked",
        attention_chunk: int = 128,
        mlp_chunk: int | None = None,
    ):
        self.num_experts = len(configs)
        for i, (c, cd) in enumerate(zip(configs, cond_dims, strict=True)):
            s = suffix(i)
            setattr(self, f"pre_attention_norm{s}", RMSNorm(c.width, cond_dim=cd, param_dtype=param_dtype, rngs=rngs))
            setattr(self, f"pre_ffw_norm{s}", RMSNorm(c.width, cond_dim=cd, param_dtype=param_dtype, rngs=rngs))
            mlp = FeedForward(c.width, c.mlp_dim, lora=c.ffn_lora, param_dtype=param_dtype, rngs=rngs, chunk=mlp_chunk)
            setattr(self, f"mlp{s}", mlp)
        self.attn = Attention(configs, param_dtype=param_dtype, rngs=rngs, impl=attention_impl, chunk=attention_chunk)

    def __call__(self, xs, positions, mask, conds, kv_cache=None):
        normed: list[jax.Array | None] = []
        gates: list[jax.Array | None] = []
        for i, x in enumerate(xs):
            if x is None:
                normed.append(None)
                gates.append(None)
                continue
            y, gate = getattr(self, f"pre_attention_norm{suffix(i)}")(x, conds[i])
            normed.append(y)
            gates.append(gate)
        attn_out, kv = self.attn(normed, positions, mask, kv_cache)
        out: list[jax.Array | None] = []
        for i, (x, a, gate) in enumerate(zip(xs, attn_out, gates, strict=True)):
            if x is None or a is None:
                out.append(None)
                continue
            x = x + (a if gate is None else a * gate)  # adaRMS gates the residual branch
            y, gate2 = getattr(self, f"pre_ffw_norm{suffix(i)}")(x, conds[i])
            y = getattr(self, f"mlp{suffix(i)}")(y)
            out.append(x + (y if gate2 is None else y * gate2))
        return out, kv


def stacked(make: Callable[[nnx.Rngs], nnx.Module], depth: int, rngs: nnx.Rngs) -> nnx.Module:
    """``depth`` independently initialised copies of ``make``'s module, params stacked on a leading axis."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
    keys = jax.random.split(rngs.params(), depth)
    # One jitted init for the whole stack: far fewer (slow, CPU) compilations than op-by-op eager init.
    states = jax.jit(jax.vmap(lambda key: nnx.state(make(nnx.Rngs(params=key)))))(keys)
    return nnx.merge(graphdef, states)


def remat_policy(remat: bool | RematPolicy) -> Callable | None:
    """The ``jax.checkpoint`` policy of a remat setting; None: no rematerialisation."""
    match remat:
        case False | "none":
            return None
        case "dots":
            # Weight matmuls have no dot_general batch dims; attention's score/value products do (recomputed).
            return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
        case True | "nothing":
            return jax.checkpoint_policies.nothing_saveable
    raise ValueError(f"unknown remat policy {remat!r}; use none, dots or nothing")


def run_stacked(
    layers: nnx.Module,
    depth: int,
    fn: Callable,
    carry,
    per_layer,
    *,
    scan: bool,
    remat: bool | RematPolicy,
):
    """Apply ``fn(layer, carry, per_layer_slice) -> (carry, out)`` over stacked ``layers``; outs are stacked.

    ``scan=True`` uses ``lax.scan``; otherwise a Python loop (same weights, same math; unrolled HLO).
    ``remat`` is what a layer keeps for the backward pass: "none" (or False) everything, "dots" the outputs of
    its weight matmuls only, "nothing" (or True) nothing (as the reference's ``nothing_saveable``).
    """
    graphdef, state = nnx.split(layers)

    def body(c, xs):
        layer_state, extra = xs
        return fn(nnx.merge(graphdef, layer_state), c, extra)

    policy = remat_policy(remat)
    if policy is not None:
        body = jax.checkpoint(body, policy=policy)
    if scan:
        return jax.lax.scan(body, carry, (state, per_layer))
    outs = []
    for i in range(depth):
        carry, out = body(carry, jax.tree.map(lambda a, i=i: a[i], (state, per_layer)))
        outs.append(out)
    return carry, jax.tree.map(lambda *a: jnp.stack(a), *outs)


class Gemma(nnx.Module):
    """The mixture: ``embedder`` (expert 0), stacked ``layers``, one ``final_norm{_i}`` per expert.

    ``adarms[i]`` makes expert ``i``'s norms adaptive (pi0.5's action expert), conditioned on a vector of
    that expert's width.
    """

    def __init__(
        self,
        configs: Sequence[GemmaConfig],
        *,
        adarms: Sequence[bool] | None = None,
        dtype: jnp.dtype = jnp.dtype(jnp.bfloat16),
        param_dtype: jnp.dtype = jnp.dtype(jnp.float32),
        scan: bool = True,
        remat: bool | RematPolicy = True,
        attention_impl: AttentionImpl = "chunked",
        attention_chunk: int = 128,
        mlp_chunk: int | None = None,
        rngs: nnx.Rngs,
    ):
        configs = tuple(configs)
        adarms = tuple(adarms or (False,) * len(configs))
        self.configs, self.dtype, self.scan, self.remat = configs, dtype, scan, remat
        self.depth = configs[0].depth
        cond_dims = tuple(c.width if a else None for c, a in zip(configs, adarms, strict=True))
        self.embedder = Embedder(configs[0].vocab_size, configs[0].width, param_dtype=param_dtype, rngs=rngs)
        self.layers = stacked(
            lambda r: Block(
                configs, cond_dims, param_dtype=param_dtype, rngs=r, attention_impl=attention_impl,
                attention_chunk=attention_chunk, mlp_chunk=mlp_chunk,
            ),
            self.depth,
            rngs,
        )
        for i, (c, cd) in enumerate(zip(configs, cond_dims, strict=True)):
            setattr(self, f"final_norm{suffix(i)}", RMSNorm(c.width, cond_dim=cd, param_dtype=param_dtype, rngs=rngs))

    def embed(self, ids: jax.Array) -> jax.Array:
        """Token ids ``[B, T]`` -> scaled embeddings ``[B, T, D_0]`` in the compute dtype."""
        return self.embedder.encode(ids).astype(self.dtype)

    def __call__(
        self,
        xs: Sequence[jax.Array | None],
        *,
        mask: jax.Array,
        positions: jax.Array,
        kv_cache: KVCache | None = None,
        adarms_cond: Sequence[jax.Array | None] | None = None,
    ) -> tuple[list[jax.Array | None], KVCache]:
        """xs: per expert embedded tokens ``[B, T_i, D_i]`` or None (expert skipped); mask ``[B, T, S]``;
        positions ``[B, T]``; kv_cache from a previous call (prepended keys/values, not updated).

        Returns per-expert final-normed outputs and the KV cache ``(k, v)`` each ``[depth, B, S, K, H]``.
        """
        xs = [None if x is None else x.astype(self.dtype) for x in xs]
        conds = list(adarms_cond) if adarms_cond is not None else [None] * len(xs)

        def layer_fn(layer, carry, cache):
            return layer(carry, positions, mask, conds, cache)

        xs, kv = run_stacked(self.layers, self.depth, layer_fn, xs, kv_cache, scan=self.scan, remat=self.remat)
        outs = []
        for i, x in enumerate(xs):
            outs.append(None if x is None else getattr(self, f"final_norm{suffix(i)}")(x, conds[i])[0])
        return outs, kv
