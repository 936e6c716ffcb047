"""``pi0 convert checkpoint --verify``: the same observation and noise through every implementation that can
load each side of a conversion; the max abs difference of the actions against the source run in JAX.

Implementations: our JAX model for every format, and LeRobot's PyTorch pi0 / pi0.5 for a LeRobot directory.
Everything runs in float32 (a bfloat16 checkpoint is upcast), 10 Euler steps, the KV-cached sampler.

pi0-FAST predicts tokens, not a flow: both sides run through our JAX ``Pi0FAST`` and are compared on the
per-example next-token loss of a teacher-forced sequence and on the greedy tokens decoded from its prompt (a
single differing token fails). LeRobot's PyTorch pi0-FAST is not run: its reference comparison is the bit-exact
round trip of the weights (``convert`` back and compare).

LeRobot computes the flow-matching time embedding in float64 where the reference (and pi0) use float32; on random
weights that alone moves the actions by ~1e-4. So LeRobot is run twice: as shipped (reported), and with its time
embedding computed in float32 (gated): the gate is about the converted weights, not about that precision choice.

LeRobot builds only the full-size model (Gemma 2B + 300M, So400m). For reduced configs (tests) its Gemma variant
table is pointed at the checkpoint's sizes while the model is built, and its vision tower and token embedding
are resized to match; its joint attention hard-codes 8 heads, so reduced configs must keep 8 heads.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from pi0cli.convert.checkpoints import Checkpoint, is_full_size, lerobot_config
from pi0cli.errors import ConversionError

if TYPE_CHECKING:
    from pi0cli.models.config import Pi0Config

NUM_STEPS = 10
LEROBOT_HEADS = 8


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Max abs action differences against the source (JAX) run, by implementation name."""

    differences: dict[str, float]
    gated: tuple[str, ...]
    tolerance: float
    max_abs_action: float
    signal: float  # max |actions - noise|: how far the model moved the noise (what the comparison can see)
    #: What ``differences`` measure: "actions" (pi0, pi0.5) or "loss and greedy tokens" (pi0-FAST).
    compared: str = "actions"
    #: Implementations that could not run this model, with the reason (what was not compared, and why).
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(self.differences[name] <= self.tolerance for name in self.gated)


def _example_images(model_config: Pi0Config, batch: int, rng: np.random.Generator) -> tuple[dict, dict]:
    """Images in [-1, 1] for every camera slot, the last one masked when there are several."""
    import jax.numpy as jnp

    h, w = model_config.image_resolution
    keys = model_config.image_keys
    images = {k: jnp.asarray(rng.uniform(-1, 1, (batch, h, w, 3)), jnp.float32) for k in keys}
    masks = {k: jnp.asarray(np.full(batch, i < max(1, len(keys) - 1))) for i, k in enumerate(keys)}
    return images, masks


def example_inputs(model_config: Pi0Config, *, batch: int = 2, seed: int = 0) -> tuple[Any, np.ndarray]:
    """A deterministic model-level observation (images in [-1, 1], a padded prompt, the last camera masked when
    there are several) and the flow-matching noise for it."""
    import jax.numpy as jnp

    from pi0cli.models.observation import Observation

    rng = np.random.default_rng(seed)
    images, masks = _example_images(model_config, batch, rng)
    length = model_config.token_len
    token_mask = np.arange(length)[None, :] < np.array([max(1, length - 2 - i) for i in range(batch)])[:, None]
    tokens = rng.integers(1, model_config.vlm.vocab_size, (batch, length)) * token_mask
    obs = Observation(images=images, image_masks=masks,
                      state=jnp.asarray(rng.normal(size=(batch, model_config.action_dim)), jnp.float32),
                      tokenized_prompt=jnp.asarray(tokens, jnp.int32), tokenized_prompt_mask=jnp.asarray(token_mask))
    noise = rng.normal(size=(batch, model_config.action_horizon, model_config.action_dim)).astype(np.float32)
    return obs, noise


def _float32(model_config: Pi0Config) -> Pi0Config:
    return dataclasses.replace(model_config, dtype="float32", param_dtype="float32")


def jax_actions(ckpt: Checkpoint, obs: Any, noise: np.ndarray) -> np.ndarray:
    """Actions of our JAX model holding ``ckpt``'s parameters (float32)."""
    import jax.numpy as jnp

    from pi0cli.models.params import build_any_model, unflatten

    config = _float32(ckpt.model_config)
    params = {k: np.asarray(v, np.float32) for k, v in ckpt.params.items()}
    model: Any = build_any_model(config, unflatten(params))
    import jax

    # The noise is given, so the key is never drawn from; any key will do.
    return np.asarray(model.sample_actions(jax.random.key(0), obs, noise=jnp.asarray(noise), num_steps=NUM_STEPS))


def posemb_float32(time, dimension, min_period, max_period, device="cpu"):
    """LeRobot's sinusoidal time embedding computed in float32, as the reference does."""
    import torch

    fraction = torch.linspace(0.0, 1.0, dimension // 2, dtype=torch.float32, device=device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * np.pi / period)[None, :] * time[:, None].float()
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    """Temporarily replace ``module.name`` (LeRobot exposes no hook for sizes or precision)."""
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def _lerobot_module(model_config: Pi0Config) -> Any:
    try:
        import transformers  # noqa: F401  (LeRobot's pi0 needs it; lerobot does not install it by default)

        module = model_config.family.lerobot_modeling()
    except ImportError as exc:
        raise ConversionError(f"comparing with LeRobot's PyTorch pi0 needs its extra dependencies ({exc}); install "
                              "them with `pip install 'pi0[dev]'` (or `pip install transformers`)") from None
    return module


def lerobot_unavailable(model_config: Pi0Config) -> str | None:
    """Why LeRobot's PyTorch implementation cannot run ``model_config`` (None when it can): asked before a
    conversion writes anything, so ``--verify`` says up front what it will not compare."""
    vlm, expert = model_config.vlm, model_config.expert
    if vlm.num_heads != LEROBOT_HEADS or expert.num_heads != LEROBOT_HEADS:
        return (f"LeRobot's pi0 hard-codes {LEROBOT_HEADS} attention heads and this model has {vlm.num_heads} "
                "(the reduced models a CPU trains)")
    try:
        import transformers  # noqa: F401  (LeRobot's pi0 needs it; lerobot does not install it by default)
    except ImportError:
        return "LeRobot's pi0 needs the transformers package (pip install 'pi0[dev]' or pip install transformers)"
    return None


def build_lerobot_model(ckpt: Checkpoint) -> Any:
    """LeRobot's ``PI0Pytorch`` / ``PI05Pytorch`` (float32, eval mode) holding ``ckpt``'s converted weights."""
    import torch

    from pi0cli.convert.lerobot_names import EMBED_TOKENS, EXPERT_LM_HEAD, LM_HEAD, to_lerobot

    cfg = _float32(ckpt.model_config)
    vlm, expert, img = cfg.vlm, cfg.expert, cfg.siglip
    if vlm.num_heads != LEROBOT_HEADS or expert.num_heads != LEROBOT_HEADS:
        raise ConversionError(f"LeRobot's pi0 hard-codes {LEROBOT_HEADS} attention heads; this model has "
                              f"{vlm.num_heads}, so it cannot be compared with LeRobot")
    module = _lerobot_module(cfg)
    full = is_full_size(cfg)
    lr_cfg = lerobot_config(cfg if full else dataclasses.replace(
        cfg, paligemma_variant="gemma_2b", action_expert_variant="gemma_300m"))
    sizes = {"gemma_2b": module.GemmaConfig(vlm.width, vlm.depth, vlm.mlp_dim, vlm.num_heads, vlm.num_kv_heads,
                                            vlm.head_dim),
             "gemma_300m": module.GemmaConfig(expert.width, expert.depth, expert.mlp_dim, expert.num_heads,
                                              expert.num_kv_heads, expert.head_dim)}
    model_class = cfg.family.lerobot_model_class(module)
    torch.manual_seed(0)
    with _patched(module, "get_gemma_config", sizes.__getitem__) if not full else contextlib.nullcontext():
        model = model_class(lr_cfg)
    if not full:
        from transformers import SiglipVisionConfig, SiglipVisionModel

        inner = model.paligemma_with_expert.paligemma.model
        h, _ = cfg.image_resolution
        inner.vision_tower = SiglipVisionModel(SiglipVisionConfig(  # type: ignore[call-arg]  # kwargs-only config
            hidden_size=img.width, intermediate_size=img.mlp_dim, num_hidden_layers=img.depth,
            num_attention_heads=img.num_heads, image_size=h, patch_size=img.patch_size,
            hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False))
        inner.multi_modal_projector.linear = torch.nn.Linear(img.width, vlm.width)
        if vlm.vocab_size != inner.language_model.embed_tokens.num_embeddings:
            inner.language_model.embed_tokens = torch.nn.Embedding(vlm.vocab_size, vlm.width)
    state = {k.removeprefix("model."): torch.from_numpy(np.ascontiguousarray(v, np.float32))
             for k, v in to_lerobot(ckpt.params, cfg).items()}
    state[EMBED_TOKENS] = state.pop(LM_HEAD)  # what LeRobot's from_pretrained does with the tied embedding
    state.pop(EXPERT_LM_HEAD)  # unused to sample actions
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ConversionError(f"LeRobot's model does not take the converted weights: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    return model.float().eval()


def lerobot_actions(model: Any, model_config: Pi0Config, obs: Any, noise: np.ndarray, *,
                    float32_time_embedding: bool) -> np.ndarray:
    """Actions of LeRobot's PyTorch model for the same observation and noise."""
    import torch

    keys = model_config.image_keys
    images = [torch.from_numpy(np.asarray(obs.images[k]).transpose(0, 3, 1, 2).copy()) for k in keys]
    masks = [torch.from_numpy(np.array(obs.image_masks[k])) for k in keys]
    tokens = torch.from_numpy(np.asarray(obs.tokenized_prompt).astype(np.int64))
    token_mask = torch.from_numpy(np.array(obs.tokenized_prompt_mask))
    # pi0 passes the continuous state after the prompt; pi0.5 has it in the prompt (the family's call).
    args = (images, masks, tokens, token_mask) + model_config.family.lerobot_sample_args(obs)
    module = _lerobot_module(model_config)
    with contextlib.ExitStack() as stack, torch.no_grad():
        if float32_time_embedding:
            stack.enter_context(_patched(module, "create_sinusoidal_pos_embedding", posemb_float32))
        return model.sample_actions(*args, noise=torch.from_numpy(noise), num_steps=NUM_STEPS).numpy()


FAST_DECODING_STEPS = 16


def fast_example_inputs(model_config: Pi0Config, *, batch: int = 2, seed: int = 0) -> tuple[Any, Any]:
    """A teacher-forced pi0-FAST observation (prompt tokens, then generated ones with the loss on them) and the
    same rows holding the prompt alone (what greedy decoding starts from)."""
    import jax.numpy as jnp

    from pi0cli.models.observation import Observation

    rng = np.random.default_rng(seed)
    length = model_config.token_len
    images, masks = _example_images(model_config, batch, rng)
    tokens = rng.integers(4, model_config.vlm.vocab_size, (batch, length))
    prefix = np.array([max(1, length // 2 - i) for i in range(batch)])
    valid = np.arange(length)[None, :] < np.array([max(2, length - 2 - i) for i in range(batch)])[:, None]
    generated = valid & (np.arange(length)[None, :] >= prefix[:, None])
    prompt = valid & ~generated

    def observation(mask: np.ndarray, ar: np.ndarray) -> Observation:
        return Observation(images=images, image_masks=masks, state=jnp.zeros((batch, model_config.action_dim)),
                           tokenized_prompt=jnp.asarray(np.where(mask, tokens, 0), jnp.int32),
                           tokenized_prompt_mask=jnp.asarray(mask), token_ar_mask=jnp.asarray(ar.astype(np.int32)),
                           token_loss_mask=jnp.asarray(ar))

    return observation(valid, generated), observation(prompt, np.zeros_like(generated))


def jax_fast_outputs(ckpt: Checkpoint, teacher_forced: Any, prompt: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-example loss ``[B]`` and greedy token ids ``[B, K]`` of our JAX pi0-FAST holding ``ckpt`` (float32)."""
    import jax

    from pi0cli.models.params import build_any_model, unflatten

    params = {k: np.asarray(v, np.float32) for k, v in ckpt.params.items()}
    model: Any = build_any_model(_float32(ckpt.model_config), unflatten(params))
    loss = np.asarray(model.compute_loss(jax.random.key(0), teacher_forced))
    tokens = np.asarray(model.sample_actions(jax.random.key(0), prompt, max_decoding_steps=FAST_DECODING_STEPS,
                                             temperature=0.0))
    return loss, tokens


def _verify_fast(source: Checkpoint, target: Checkpoint, tolerance: float, seed: int) -> VerifyResult:
    teacher_forced, prompt = fast_example_inputs(source.model_config, seed=seed)
    loss, tokens = jax_fast_outputs(source, teacher_forced, prompt)
    target_loss, target_tokens = jax_fast_outputs(target, teacher_forced, prompt)
    name = f"{target.format} (pi0-FAST JAX)"
    # A differing greedy token counts as a difference of 1 (always above any sensible tolerance).
    diffs = {f"{name} loss": float(np.abs(target_loss.astype(np.float64) - loss).max()),
             f"{name} greedy tokens differing": float((target_tokens != tokens).sum())}
    return VerifyResult(differences=diffs, gated=tuple(diffs), tolerance=tolerance,
                        max_abs_action=float(np.abs(loss).max()), signal=float(tokens.size),
                        compared="loss and greedy tokens")


def verify(source: Checkpoint, target: Checkpoint, *, tolerance: float = 1e-4, seed: int = 0) -> VerifyResult:
    """Run one example through the source (JAX) and every implementation that loads the target."""
    if source.model_config.family.autoregressive:  # token ids, not a flow: compared on loss and greedy tokens
        return _verify_fast(source, target, tolerance, seed)
    obs, noise = example_inputs(source.model_config, seed=seed)
    reference = jax_actions(source, obs, noise)
    runs: dict[str, np.ndarray] = {f"{target.format} (pi0 JAX)": jax_actions(target, obs, noise)}
    gated = [f"{target.format} (pi0 JAX)"]
    skipped: dict[str, str] = {}
    for side in (source, target):
        if side.format == "lerobot":  # the same weights in LeRobot's own implementation
            reason = lerobot_unavailable(side.model_config)
            if reason is not None:
                skipped[f"{side.format} (LeRobot PyTorch)"] = reason
                continue
            model = build_lerobot_model(side)
            shipped = f"{side.format} (LeRobot PyTorch, as shipped)"
            matched = f"{side.format} (LeRobot PyTorch, float32 time embedding)"
            runs[shipped] = lerobot_actions(model, side.model_config, obs, noise, float32_time_embedding=False)
            runs[matched] = lerobot_actions(model, side.model_config, obs, noise, float32_time_embedding=True)
            gated.append(matched)
    diffs = {name: float(np.abs(actions.astype(np.float64) - reference).max()) for name, actions in runs.items()}
    return VerifyResult(differences=diffs, gated=tuple(gated), tolerance=tolerance,
                        max_abs_action=float(np.abs(reference).max()), signal=float(np.abs(reference - noise).max()),
                        skipped=skipped)
