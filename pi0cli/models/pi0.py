"""pi0 and pi0.5: a PaliGemma VLM plus an action expert trained by flow matching (Flax NNX).

Token layout: prefix = [image tokens per camera | prompt tokens] (bidirectional, run by the VLM expert);
suffix = [state token (pi0 only) | action tokens] (run by the action expert). Flow-matching convention:
t = 1 is pure noise, t = 0 the data; ``x_t = t * noise + (1 - t) * actions``, velocity target
``u = noise - actions``; sampling integrates from t = 1 to 0 with Euler steps ``dt = -1 / num_steps``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pi0cli.models.config import Pi0Config
from pi0cli.models.gemma import Gemma, KVCache
from pi0cli.models.observation import Actions, ModelInputError, Observation, preprocess_observation
from pi0cli.models.rtc import (
    DEFAULT_MAX_GUIDANCE_WEIGHT,
    RTCInputs,
    active_rows,
    guided_velocity,
    prefix_weights,
)
from pi0cli.models.siglip import SigLIP


def make_attn_mask(input_mask: jax.Array, mask_ar: jax.Array) -> jax.Array:
    """Attention mask ``[B, N, N]`` from validity ``input_mask [B, N]`` and ``mask_ar [B, N]`` (or ``[N]``).

    Token i may attend token j iff both are valid and ``cumsum(mask_ar)[j] <= cumsum(mask_ar)[i]``: a True in
    ``mask_ar`` starts a new block that earlier tokens cannot see. Examples (per row, ``mask_ar``):
      ``[1 1 1 1 1 1]``: plain causal attention.
      ``[0 0 0 1 1 1]``: prefix-LM: the first 3 tokens attend each other, the last 3 are causal.
      ``[1 0 1 0 0 1 0 0]``: block causal: blocks {0,1}, {2,3,4}, {5,6,7}, each sees itself and earlier blocks.
    """
    mask_ar = jnp.broadcast_to(mask_ar, input_mask.shape)
    cum = jnp.cumsum(mask_ar.astype(jnp.int32), axis=1)
    attn = cum[:, None, :] <= cum[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    return attn & valid


def posemb_sincos(pos: jax.Array, embedding_dim: int, min_period: float, max_period: float) -> jax.Array:
    """Sine-cosine embedding of scalars ``pos [B]`` -> ``[B, embedding_dim]`` = ``[sin(2 pi pos / P), cos(...)]``
    with periods ``P`` geometric from ``min_period`` to ``max_period`` (``embedding_dim / 2`` of them)."""
    if embedding_dim % 2:
        raise ValueError(f"embedding_dim ({embedding_dim}) must be even")
    fraction = jnp.linspace(0.0, 1.0, embedding_dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    x = jnp.einsum("i,j->ij", pos, 1.0 / period * 2 * jnp.pi, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


def vision_tower(config: Pi0Config, rngs: nnx.Rngs) -> SigLIP:
    """The SigLIP image encoder of a pi0-family model, projecting into the VLM's width (pi0, pi0.5, pi0-FAST)."""
    return SigLIP(
        config.siglip,
        image_resolution=config.image_resolution,
        out_width=config.vlm.width,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        scan=config.scan,
        remat=config.vision_remat,
        attention_impl=config.attention_impl,
        attention_chunk=config.attention_chunk,
        rngs=rngs,
    )


class PaliGemma(nnx.Module):
    """Container that gives the reference's ``PaliGemma/img`` and ``PaliGemma/llm`` parameter paths."""

    def __init__(self, img: SigLIP, llm: Gemma):
        self.img = img
        self.llm = llm


class Pi0(nnx.Module):
    """pi0 (``model_type="pi0"``) or pi0.5 (``"pi05"``: adaRMS time conditioning, no continuous state token)."""

    def __init__(self, config: Pi0Config, rngs: nnx.Rngs):
        self.config = config
        dtype, pdtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        vlm, expert = config.vlm, config.expert
        llm = Gemma(
            [vlm, expert],
            adarms=[False, config.pi05],
            dtype=dtype,
            param_dtype=pdtype,
            scan=config.scan,
            remat=config.llm_remat,
            attention_impl=config.attention_impl,
            attention_chunk=config.attention_chunk,
            mlp_chunk=config.mlp_chunk,
            rngs=rngs,
        )
        self.PaliGemma = PaliGemma(vision_tower(config, rngs), llm)
        w = expert.width
        lin: dict[str, Any] = dict(param_dtype=pdtype, rngs=rngs)
        self.action_in_proj = nnx.Linear(config.action_dim, w, **lin)
        if config.pi05:
            self.time_mlp_in = nnx.Linear(w, w, **lin)
            self.time_mlp_out = nnx.Linear(w, w, **lin)
        else:
            self.state_proj = nnx.Linear(config.action_dim, w, **lin)
            self.action_time_mlp_in = nnx.Linear(2 * w, w, **lin)
            self.action_time_mlp_out = nnx.Linear(w, w, **lin)
        self.action_out_proj = nnx.Linear(w, config.action_dim, **lin)

    # ----------------------------------------------------------------------------------------------- embedding
    def embed_prefix(self, obs: Observation) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Image and prompt tokens: ``(tokens [B, S, D_vlm], input_mask [B, S], ar_mask [S])``; all bidirectional."""
        parts, masks = [], []
        for key in self.config.image_keys:
            t = self.PaliGemma.img(obs.images[key])  # [B, n, D]
            parts.append(t.astype(self.PaliGemma.llm.dtype))
            masks.append(jnp.broadcast_to(obs.image_masks[key][:, None], t.shape[:2]))
        if obs.tokenized_prompt is not None:
            parts.append(self.PaliGemma.llm.embed(obs.tokenized_prompt))
            prompt_mask = obs.tokenized_prompt_mask
            if prompt_mask is None:
                prompt_mask = jnp.ones(obs.tokenized_prompt.shape, bool)
            masks.append(prompt_mask.astype(bool))
        tokens = jnp.concatenate(parts, axis=1)
        mask = jnp.concatenate(masks, axis=1)
        return tokens, mask, jnp.zeros(tokens.shape[1], dtype=bool)

    def embed_suffix(
        self, obs: Observation, noisy_actions: jax.Array, timestep: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
        """Suffix tokens for x_t ``[B, H, A]`` at time ``[B]``: ``(tokens [B, T, D_exp], input_mask [B, T],
        ar_mask [T], adarms_cond [B, D_exp] or None)``. pi0: T = 1 + H (state token first); pi0.5: T = H."""
        cfg = self.config
        b, h = noisy_actions.shape[:2]
        w = cfg.expert.width
        time_emb = posemb_sincos(timestep, w, min_period=4e-3, max_period=4.0)
        action_tokens = self.action_in_proj(noisy_actions)
        parts, ar = [], []
        if cfg.pi05:
            cond = nnx.swish(self.time_mlp_out(nnx.swish(self.time_mlp_in(time_emb))))
            action_expert_tokens = action_tokens
        else:
            cond = None
            state = obs.state
            if state.shape[-1] != cfg.action_dim:
                raise ModelInputError(f"state has {state.shape[-1]} dims; pad it to action_dim={cfg.action_dim}")
            parts.append(self.state_proj(state)[:, None, :])
            ar.append(jnp.ones(1, dtype=bool))  # the state token does not let the prefix see it
            time_tokens = jnp.broadcast_to(time_emb[:, None, :], (b, h, w))
            x = jnp.concatenate([action_tokens, time_tokens], axis=-1)
            action_expert_tokens = self.action_time_mlp_out(nnx.swish(self.action_time_mlp_in(x)))
        parts.append(action_expert_tokens)
        # The first action token opens a new block: state (and prefix) cannot see actions.
        ar.append(jnp.arange(h) == 0)
        tokens = jnp.concatenate(parts, axis=1)
        return tokens, jnp.ones(tokens.shape[:2], dtype=bool), jnp.concatenate(ar), cond

    # ------------------------------------------------------------------------------------------------ training
    def preprocess(self, rng: jax.Array | None, obs: Observation, train: bool) -> Observation:
        """The model's own :func:`preprocess_observation` (its cameras, resolution, augmentations, state rules)."""
        return preprocess_observation(
            rng, obs, train=train, image_keys=self.config.image_keys, image_resolution=self.config.image_resolution,
            augment_geometric=self.config.augment_geometric, state_dropout=self.config.state_dropout,
            hide_state=self.config.state_input == "hidden",
        )

    def compute_loss(
        self,
        rng: jax.Array,
        obs: Observation,
        actions: Actions,
        *,
        noise: jax.Array | None = None,
        time: jax.Array | None = None,
        train: bool = False,
        preprocessed: bool = False,
        action_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Flow-matching loss per example and step, ``[B, H]``: the mean over action dims, padded dims included
        (the reference) unless ``action_mask [B, A]`` (true for a robot's real dims) says which dims count.

        ``noise [B, H, A]`` and ``time [B]`` default to N(0, I) and ``Beta(1.5, 1) * 0.999 + 0.001``.
        ``preprocessed``: ``obs`` already went through ``preprocess_observation`` (micro-batches of one batch).
        """
        pre_rng, noise_rng, time_rng = jax.random.split(rng, 3)
        if not preprocessed:
            obs = self.preprocess(pre_rng, obs, train)
        actions = actions.astype(jnp.float32)
        batch = actions.shape[:-2]
        if noise is None:
            noise = jax.random.normal(noise_rng, actions.shape)
        if time is None:
            time = jax.random.beta(time_rng, 1.5, 1.0, batch) * 0.999 + 0.001
        t = time[..., None, None]
        x_t = t * noise + (1.0 - t) * actions
        u_t = noise - actions

        prefix, prefix_mask, prefix_ar = self.embed_prefix(obs)
        suffix, suffix_mask, suffix_ar, cond = self.embed_suffix(obs, x_t, time)
        input_mask = jnp.concatenate([prefix_mask, suffix_mask], axis=1)
        ar = jnp.concatenate([prefix_ar, suffix_ar])
        mask = make_attn_mask(input_mask, ar)
        positions = jnp.cumsum(input_mask, axis=1) - 1
        (_, suffix_out), _ = self.PaliGemma.llm(
            [prefix, suffix], mask=mask, positions=positions, adarms_cond=[None, cond]
        )
        v_t = self._actions_out(suffix_out)
        if action_mask is None:
            return jnp.mean(jnp.square(v_t - u_t), axis=-1)
        # A where, not a product: a padded dim's error (even inf or nan) has no path into the loss or its gradient.
        mask = action_mask.astype(bool)[..., None, :]
        squared = jnp.where(mask, jnp.square(v_t - u_t), 0.0)
        return jnp.sum(squared, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1)

    # ------------------------------------------------------------------------------------------------ sampling
    def _actions_out(self, expert_out: jax.Array | None) -> jax.Array:
        """The action expert's outputs at the action tokens -> velocities ``[B, H, A]`` (float32)."""
        if expert_out is None:
            raise ModelInputError("the action expert produced no output (no suffix tokens)")
        return self.action_out_proj(expert_out[:, -self.config.action_horizon :].astype(jnp.float32))

    def _velocity_cached(self, obs, prefix_mask, kv_cache: KVCache, x_t, time) -> jax.Array:
        """One denoising velocity with the prefix held in ``kv_cache``; only the action expert runs."""
        b = x_t.shape[0]
        suffix, suffix_mask, suffix_ar, cond = self.embed_suffix(obs, x_t, jnp.broadcast_to(time, (b,)))
        suffix_attn = make_attn_mask(suffix_mask, suffix_ar)
        prefix_attn = jnp.broadcast_to(prefix_mask[:, None, :], (b, suffix.shape[1], prefix_mask.shape[1]))
        mask = jnp.concatenate([prefix_attn, suffix_attn], axis=-1)
        positions = jnp.sum(prefix_mask, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
        (_, out), _ = self.PaliGemma.llm([None, suffix], mask=mask, positions=positions, kv_cache=kv_cache,
                                         adarms_cond=[None, cond])
        return self._actions_out(out)

    def _velocity_full(self, obs, prefix, prefix_mask, prefix_ar, x_t, time) -> jax.Array:
        """The same velocity from one joint prefix+suffix forward (no cache), as in training."""
        b = x_t.shape[0]
        suffix, suffix_mask, suffix_ar, cond = self.embed_suffix(obs, x_t, jnp.broadcast_to(time, (b,)))
        input_mask = jnp.concatenate([prefix_mask, suffix_mask], axis=1)
        mask = make_attn_mask(input_mask, jnp.concatenate([prefix_ar, suffix_ar]))
        positions = jnp.cumsum(input_mask, axis=1) - 1
        (_, out), _ = self.PaliGemma.llm([prefix, suffix], mask=mask, positions=positions, adarms_cond=[None, cond])
        return self._actions_out(out)

    def prefill(self, obs: Observation) -> tuple[jax.Array, KVCache]:
        """Run the prefix through the VLM once: ``(prefix_mask [B, S], kv_cache)``. obs must be preprocessed."""
        prefix, prefix_mask, prefix_ar = self.embed_prefix(obs)
        mask = make_attn_mask(prefix_mask, prefix_ar)
        positions = jnp.cumsum(prefix_mask, axis=1) - 1
        _, kv_cache = self.PaliGemma.llm([prefix, None], mask=mask, positions=positions)
        return prefix_mask, kv_cache

    def sample_actions(
        self,
        rng: jax.Array,
        obs: Observation,
        *,
        num_steps: int = 10,
        noise: jax.Array | None = None,
        use_kv_cache: bool = True,
        rtc: RTCInputs | None = None,
        max_guidance_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT,
    ) -> Actions:
        """Denoise from ``noise`` (``[B, H, A]`` or ``[H, A]``; default N(0, I)) to actions ``[B, H, A]``.

        Euler steps ``x += dt * v(x, t)``, ``dt = -1 / num_steps``, from t = 1 while ``t >= -dt / 2``. With
        ``use_kv_cache`` the prefix is encoded once and each step runs only the action expert; without it every
        step runs the full prefix+suffix forward (same result; the baseline for tests and benchmarks).

        ``rtc``: real-time chunking per row (:mod:`pi0cli.models.rtc`): each step's velocity is guided toward
        the row's previous chunk, its weight clipped at ``max_guidance_weight``. A batch in which no row has a
        previous chunk runs the plain loop (bit for bit the result without ``rtc``).
        """
        cfg = self.config
        obs = self.preprocess(None, obs, train=False)
        b = obs.state.shape[0]
        shape = (b, cfg.action_horizon, cfg.action_dim)
        if noise is None:
            noise = jax.random.normal(rng, shape)
        noise = jnp.broadcast_to(noise, shape).astype(jnp.float32)
        dt = -1.0 / num_steps

        if use_kv_cache:
            prefix_mask, kv_cache = self.prefill(obs)

            def velocity(x_t, time):
                return self._velocity_cached(obs, prefix_mask, kv_cache, x_t, time)
        else:
            prefix, prefix_mask, prefix_ar = self.embed_prefix(obs)

            def velocity(x_t, time):
                return self._velocity_full(obs, prefix, prefix_mask, prefix_ar, x_t, time)

        def step(carry):
            x_t, time = carry
            return x_t + dt * velocity(x_t, time), time + dt

        def cond(carry):
            return carry[1] >= -dt / 2

        start = (noise, jnp.asarray(1.0, jnp.float32))

        def plain(start):
            # The loop body only reads the weights, so a plain lax.while_loop closing over the module is enough.
            return jax.lax.while_loop(cond, step, start)[0]

        if rtc is None:
            return plain(start)
        weights = prefix_weights(cfg.action_horizon, rtc.inference_delay, rtc.execution_horizon)
        prev = jnp.broadcast_to(rtc.prev_actions, shape).astype(jnp.float32)
        rtc = RTCInputs(prev, rtc.inference_delay, rtc.execution_horizon)

        def guided_step(carry):
            x_t, time = carry
            v = guided_velocity(lambda x: velocity(x, time), x_t, time, rtc, weights, max_guidance_weight)
            return x_t + dt * v, time + dt

        def guided(start):
            return jax.lax.while_loop(cond, guided_step, start)[0]

        # Whole-batch switch: without any previous chunk the plain loop runs as is (no VJP, identical floats).
        return jax.lax.cond(jnp.any(active_rows(rtc)), guided, plain, start)
