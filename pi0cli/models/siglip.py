"""SigLIP ViT image encoder (Flax NNX), parameter names as big_vision's (the reference's ``PaliGemma/img``).

Patch embedding (conv, stride = patch, VALID) and learned position embedding run in float32; the pre-LN
encoder blocks (stacked on a leading depth axis) in the compute dtype; ``head`` projects to the VLM width.
No pooling: one token per patch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pi0cli.models.config import AttentionImpl, RematPolicy, SigLIPConfig
from pi0cli.models.gemma import dot_product_attention, run_stacked, stacked
from pi0cli.models.lora import _lecun


class LayerNorm(nnx.Module):
    """LayerNorm (eps 1e-6) with ``scale``/``bias``, computed in float32."""

    def __init__(self, width: int, *, param_dtype: jnp.dtype):
        self.scale = nnx.Param(jnp.ones((width,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((width,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + 1e-6)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class Dense(nnx.Module):
    """``x @ kernel + bias`` where kernel is ``[*in_shape, *out_shape]`` (a DenseGeneral)."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], *, param_dtype, rngs: nnx.Rngs):
        n_in = len(in_shape)
        init = _lecun(in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + len(out_shape))))
        self.kernel = nnx.Param(init(rngs.params(), (*in_shape, *out_shape), param_dtype))
        self.bias = nnx.Param(jnp.zeros(out_shape, param_dtype))
        self.n_in = n_in

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel[...].astype(x.dtype)
        y = jnp.tensordot(x, k, axes=(tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in))))
        return y + self.bias[...].astype(x.dtype)


class MultiHeadDotProductAttention(nnx.Module):
    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        param_dtype,
        rngs: nnx.Rngs,
        impl: AttentionImpl = "chunked",
        chunk: int = 128,
    ):
        hd = width // num_heads
        self.head_dim, self.impl, self.chunk = hd, impl, chunk
        for name in ("query", "key", "value"):
            setattr(self, name, Dense((width,), (num_heads, hd), param_dtype=param_dtype, rngs=rngs))
        self.out = Dense((num_heads, hd), (width,), param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = (getattr(self, name)(x) for name in ("query", "key", "value"))  # [B, T, N, Hd]
        q = q / jnp.sqrt(jnp.asarray(self.head_dim, q.dtype))
        return self.out(dot_product_attention(q, k, v, None, impl=self.impl, chunk=self.chunk))


class MlpBlock(nnx.Module):
    def __init__(self, width: int, mlp_dim: int, *, param_dtype, rngs: nnx.Rngs):
        self.Dense_0 = Dense((width,), (mlp_dim,), param_dtype=param_dtype, rngs=rngs)
        self.Dense_1 = Dense((mlp_dim,), (width,), param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.Dense_1(jax.nn.gelu(self.Dense_0(x), approximate=True))


class EncoderBlock(nnx.Module):
    def __init__(
        self, cfg: SigLIPConfig, *, param_dtype, rngs: nnx.Rngs, attention_impl: AttentionImpl = "chunked",
        attention_chunk: int = 128,
    ):
        self.LayerNorm_0 = LayerNorm(cfg.width, param_dtype=param_dtype)
        self.MultiHeadDotProductAttention_0 = MultiHeadDotProductAttention(
            cfg.width, cfg.num_heads, param_dtype=param_dtype, rngs=rngs, impl=attention_impl, chunk=attention_chunk
        )
        self.LayerNorm_1 = LayerNorm(cfg.width, param_dtype=param_dtype)
        self.MlpBlock_0 = MlpBlock(cfg.width, cfg.mlp_dim, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.MultiHeadDotProductAttention_0(self.LayerNorm_0(x))
        return x + self.MlpBlock_0(self.LayerNorm_1(x))


class Encoder(nnx.Module):
    def __init__(
        self,
        cfg: SigLIPConfig,
        *,
        param_dtype,
        scan: bool,
        remat: bool | RematPolicy,
        rngs: nnx.Rngs,
        attention_impl: AttentionImpl = "chunked",
        attention_chunk: int = 128,
    ):
        self.depth, self.scan, self.remat = cfg.depth, scan, remat
        self.encoderblock = stacked(
            lambda r: EncoderBlock(
                cfg, param_dtype=param_dtype, rngs=r, attention_impl=attention_impl, attention_chunk=attention_chunk
            ),
            cfg.depth,
            rngs,
        )
        self.encoder_norm = LayerNorm(cfg.width, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x, _ = run_stacked(
            self.encoderblock, self.depth, lambda blk, c, _: (blk(c), None), x, None, scan=self.scan, remat=self.remat
        )
        return self.encoder_norm(x)


class SigLIP(nnx.Module):
    """Images ``[B, H, W, 3]`` in [-1, 1] -> tokens ``[B, (H/p)*(W/p), out_width]``."""

    def __init__(
        self,
        cfg: SigLIPConfig,
        *,
        image_resolution: tuple[int, int],
        out_width: int,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        scan: bool = True,
        remat: bool | RematPolicy = False,
        attention_impl: AttentionImpl = "chunked",
        attention_chunk: int = 128,
        rngs: nnx.Rngs,
    ):
        p = cfg.patch_size
        self.cfg, self.dtype = cfg, dtype
        n_tokens = (image_resolution[0] // p) * (image_resolution[1] // p)
        self.embedding = Dense((p, p, 3), (cfg.width,), param_dtype=param_dtype, rngs=rngs)  # conv kernel HWIO
        posemb_init = jax.nn.initializers.normal(stddev=cfg.width**-0.5)
        self.pos_embedding = nnx.Param(posemb_init(rngs.params(), (1, n_tokens, cfg.width), param_dtype))
        self.Transformer = Encoder(
            cfg, param_dtype=param_dtype, scan=scan, remat=remat, rngs=rngs, attention_impl=attention_impl,
            attention_chunk=attention_chunk,
        )
        self.head = Dense((cfg.width,), (out_width,), param_dtype=param_dtype, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        b, h, w, c = images.shape
        p = self.cfg.patch_size
        # A stride-p VALID conv == a dense layer over non-overlapping (p, p, c) patches, row-major patch order.
        patches = images.astype(jnp.float32).reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = self.embedding(patches).reshape(b, (h // p) * (w // p), self.cfg.width)
        x = x + self.pos_embedding[...].astype(jnp.float32)
        x = self.Transformer(x.astype(self.dtype))
        return self.head(x)
