"""Frozen model configurations and named presets.

Nothing here imports JAX: configs are plain, hashable dataclasses, so they can be jit-static arguments and be
built by the CLI without paying for a JAX import.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

from pi0cli.errors import Pi0Error, UnknownNameError
from pi0cli.models.families import family, family_names

if TYPE_CHECKING:
    from pi0cli.models.families import ModelFamily

#: The built-in model types. ``Pi0Config.model_type`` takes any registered family's name
#: (:mod:`pi0cli.models.families`); this names the ones that ship.
ModelType = Literal["pi0", "pi05", "pi0_fast"]
#: pi0-FAST decoding conventions: ``"training"`` decodes exactly as the model was trained (positions and
#: attention as in ``compute_loss``); ``"reference"`` replicates the reference's decoder (see ``pi0_fast``).
FastDecoding = Literal["training", "reference"]
#: Whether the model reads the robot's state (``hidden``: never, in training and at inference).
StateInput = Literal["visible", "hidden"]
STATE_INPUTS: tuple[StateInput, ...] = ("visible", "hidden")
DType = Literal["float32", "bfloat16"]
#: What a layer keeps for the backward pass: everything ("none": no recomputation), only the outputs of its
#: weight matmuls ("dots"; attention and elementwise work is recomputed), or nothing ("nothing": the whole
#: layer is recomputed, one extra forward pass).
RematPolicy = Literal["none", "dots", "nothing"]
REMAT_POLICIES: tuple[str, ...] = ("none", "dots", "nothing")
#: "chunked": exact attention over query chunks, never the whole score matrix at once (any backend);
#: "xla": ``jax.nn.dot_product_attention``'s XLA path (whole scores); "cudnn": its cuDNN flash kernel (GPU).
AttentionImpl = Literal["chunked", "xla", "cudnn"]
#: Which weights train: everything, or LoRA adapters on the VLM / the expert / both (see models/freeze.py).
FreezeMode = Literal["full", "lora_vlm", "lora_expert", "lora_both"]
FREEZE_MODES: tuple[str, ...] = ("full", "lora_vlm", "lora_expert", "lora_both")

#: PaliGemma's vocabulary size (the reference embedder table has this many rows).
PALIGEMMA_VOCAB_SIZE = 257_152

#: Camera slots, in the order their tokens enter the prefix (the pi0 family's; ``pi0cli/models/__init__.py``
#: registered the built-in families before this module runs).
IMAGE_KEYS: tuple[str, ...] = family("pi0").image_keys
#: pi0-FAST's camera slots (the reference names them differently from pi0's).
FAST_IMAGE_KEYS: tuple[str, ...] = family("pi0_fast").image_keys
#: Which of an embodiment's (pi0) camera slots fills each pi0-FAST slot. As the reference's DROID and LIBERO
#: FAST inputs: base_0 is the base camera, wrist_0 the (left) wrist camera, base_1 a zero image that is *not*
#: masked; here base_1 shows the right wrist camera when the robot has one (ALOHA), still with mask True.
FAST_SLOT_SOURCES: dict[str, str] = {
    "base_0_rgb": "base_0_rgb",
    "base_1_rgb": "right_wrist_0_rgb",
    "wrist_0_rgb": "left_wrist_0_rgb",
}


class ModelConfigError(Pi0Error, ValueError):
    """A model configuration that contradicts itself."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapter: ``y = x @ W + (x @ A @ B) * alpha / rank`` (``alpha / sqrt(rank)`` with rslora)."""

    rank: int
    alpha: float
    rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """One Gemma expert. All experts of a mixture must share ``num_heads``, ``num_kv_heads`` and ``head_dim``."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int = PALIGEMMA_VOCAB_SIZE
    attn_lora: LoRAConfig | None = None
    ffn_lora: LoRAConfig | None = None


@dataclasses.dataclass(frozen=True)
class SigLIPConfig:
    """A ViT image encoder (big_vision SigLIP layout) whose ``head`` projects to the VLM width."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


def _lora(cfg: GemmaConfig, rank: int, alpha: float) -> GemmaConfig:
    lora = LoRAConfig(rank=rank, alpha=alpha)
    return dataclasses.replace(cfg, attn_lora=lora, ffn_lora=lora)


_GEMMA_2B = GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256)
_GEMMA_300M = GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256)

#: Gemma variants by name (reference names plus tiny ones for tests).
GEMMA_VARIANTS: dict[str, GemmaConfig] = {
    "gemma_2b": _GEMMA_2B,
    "gemma_300m": _GEMMA_300M,
    "gemma_2b_lora": _lora(_GEMMA_2B, 16, 16.0),
    "gemma_300m_lora": _lora(_GEMMA_300M, 32, 32.0),
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    # Tiny pair: a VLM and an expert that differ in width, as the real pair does, but share the head layout.
    "tiny": GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=8, vocab_size=1024),
    "tiny_expert": GemmaConfig(
        width=16, depth=2, mlp_dim=32, num_heads=2, num_kv_heads=1, head_dim=8, vocab_size=1024
    ),
}
# Small pair for an hour of CPU training: wide enough for smooth action chunks (the tiny expert is not).
GEMMA_VARIANTS["small"] = GemmaConfig(width=64, depth=3, mlp_dim=256, num_heads=4, num_kv_heads=1, head_dim=16,
                                      vocab_size=1024)
GEMMA_VARIANTS["small_expert"] = GEMMA_VARIANTS["small"]
GEMMA_VARIANTS["tiny_lora"] = _lora(GEMMA_VARIANTS["tiny"], 4, 4.0)
GEMMA_VARIANTS["tiny_expert_lora"] = _lora(GEMMA_VARIANTS["tiny_expert"], 4, 4.0)

#: SigLIP variants by name.
SIGLIP_VARIANTS: dict[str, SigLIPConfig] = {
    "So400m/14": SigLIPConfig(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14),
    "tiny": SigLIPConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8),
    "small": SigLIPConfig(width=64, depth=3, mlp_dim=256, num_heads=4, patch_size=8),
}


def gemma_variant(name: str) -> GemmaConfig:
    if name not in GEMMA_VARIANTS:
        raise UnknownNameError("Gemma variant", name, GEMMA_VARIANTS)
    return GEMMA_VARIANTS[name]


def siglip_variant(name: str) -> SigLIPConfig:
    if name not in SIGLIP_VARIANTS:
        raise UnknownNameError("SigLIP variant", name, SIGLIP_VARIANTS)
    return SIGLIP_VARIANTS[name]


@dataclasses.dataclass(frozen=True)
class Pi0Config:
    """pi0 / pi0.5 / pi0-FAST (or any registered model family's) configuration (reference defaults).

    ``model_type`` names a registered family (:mod:`pi0cli.models.families`; ``config.family``), which supplies
    the defaults that differ between kinds of model: the camera slots, the prompt length, the discrete state.

    ``dtype`` is the compute dtype; ``param_dtype`` the storage dtype of the weights (float32 for training,
    bfloat16 is enough for inference). ``scan`` runs the stacked layers with ``lax.scan`` (else a Python loop
    over the same stacked weights, which XLA's cost analysis can count); ``remat`` recomputes each layer's
    activations in the backward pass (saves memory when training).

    ``image_crop`` (top, left, height, width as fractions of the image) cuts a window out of every non-wrist
    camera before the resize to ``image_resolution``: a small model at a low resolution can then still resolve
    a few-pixel object (the simulated cube spans one 8-pixel patch of the whole 64-pixel frame). It is part of
    the model config, so training, serving and evaluation all crop alike. ``augment_geometric`` switches the
    training-time random crop and rotation of non-wrist cameras (reference: on); off when the target position
    in the image must be read to a pixel. ``state_dropout`` is the training-time probability of hiding an
    example's continuous state (zeros: the dataset mean after normalisation) so that the policy has to read
    the scene from its cameras instead of continuing the trajectory its joint positions imply (reference: 0);
    pi0-FAST reads its state as text, so there the example's state tokens are hidden from attention instead.
    ``state_input="hidden"`` hides the state from every example, in training and at inference: a model trained
    with ``state_dropout`` has learnt that mode too, so it can be served without its state (``pi0 eval/serve
    --state-input hidden``); pi0.5's text state has no hidden mode.

    ``model_type="pi0_fast"`` is the autoregressive pi0-FAST: one Gemma (``paligemma_variant``; the action
    expert variant is unused) with a tied LM head predicting FAST action tokens. Its defaults differ: the
    cameras default to ``FAST_IMAGE_KEYS`` (when ``image_keys`` is left at pi0's), ``max_token_len`` to 250,
    and ``fast_decoding`` picks the decoding convention (``"training"``, or ``"reference"`` for exact parity
    with the reference's decoder, including its position offset ``fast_reference_position_offset``).
    """

    model_type: str = "pi0"
    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    siglip_variant: str = "So400m/14"
    dtype: DType = "bfloat16"
    param_dtype: DType = "float32"
    action_dim: int = 32
    action_horizon: int = 50
    max_token_len: int | None = None  # None: the family's (48 for pi0, 200 for pi0.5, 250 for pi0-FAST)
    image_resolution: tuple[int, int] = (224, 224)
    image_keys: tuple[str, ...] = IMAGE_KEYS
    discrete_state_input: bool | None = None  # None: the family's (pi0.5's; only informs the tokenizer)
    image_crop: tuple[float, float, float, float] | None = None
    augment_geometric: bool = True
    state_dropout: float = 0.0
    state_input: StateInput = "visible"
    scan: bool = True
    remat: bool = True
    #: per-module remat policies; None follows ``remat`` (True: "nothing", False: "none").
    remat_llm: RematPolicy | None = None
    remat_vision: RematPolicy | None = None
    attention_impl: AttentionImpl = "chunked"
    #: query tokens per attention chunk ("chunked") and tokens per MLP chunk (None: the MLP runs whole).
    attention_chunk: int = 128
    mlp_chunk: int | None = None
    fast_decoding: FastDecoding = "training"
    fast_reference_position_offset: int = 1

    def __post_init__(self) -> None:
        for field in ("remat_llm", "remat_vision"):
            if getattr(self, field) not in (None, *REMAT_POLICIES):
                raise ModelConfigError(f"{field} {getattr(self, field)!r} is not one of {', '.join(REMAT_POLICIES)}")
        if self.attention_impl not in ("chunked", "xla", "cudnn"):
            raise ModelConfigError(f"attention_impl {self.attention_impl!r} is not one of chunked, xla, cudnn")
        if self.attention_chunk <= 0 or (self.mlp_chunk is not None and self.mlp_chunk <= 0):
            raise ModelConfigError("attention_chunk and mlp_chunk must be positive")
        try:
            fam = family(self.model_type)
        except UnknownNameError:
            raise ModelConfigError(
                f"model_type {self.model_type!r} is not supported; use one of {', '.join(family_names())} "
                "(or register a model family: pi0cli.models.families.register_family)"
            ) from None
        if self.image_keys == IMAGE_KEYS and fam.image_keys != IMAGE_KEYS:
            object.__setattr__(self, "image_keys", fam.image_keys)  # frozen: the one defaulted field
        if self.fast_decoding not in ("training", "reference"):
            raise ModelConfigError(f"fast_decoding {self.fast_decoding!r} is not supported; use training or reference")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in ("float32", "bfloat16"):
                raise ModelConfigError(f"{field} {getattr(self, field)!r} is not supported; use float32 or bfloat16")
        vlm, expert, img = self.vlm, self.expert, self.siglip
        if not fam.has_action_expert:
            expert = vlm  # no action expert (pi0-FAST): nothing to match
        if (vlm.num_heads, vlm.num_kv_heads, vlm.head_dim) != (expert.num_heads, expert.num_kv_heads, expert.head_dim):
            raise ModelConfigError(
                f"experts {self.paligemma_variant!r} and {self.action_expert_variant!r} must share num_heads, "
                "num_kv_heads and head_dim to attend jointly; pick a matching action_expert_variant"
            )
        if vlm.depth != expert.depth:
            raise ModelConfigError(
                f"experts {self.paligemma_variant!r} (depth {vlm.depth}) and {self.action_expert_variant!r} "
                f"(depth {expert.depth}) must have the same depth"
            )
        if vlm.num_heads % vlm.num_kv_heads:
            raise ModelConfigError(f"num_heads {vlm.num_heads} must be a multiple of num_kv_heads {vlm.num_kv_heads}")
        h, w = self.image_resolution
        if h % img.patch_size or w % img.patch_size:
            raise ModelConfigError(
                f"image_resolution {self.image_resolution} must be a multiple of the patch size {img.patch_size}"
            )
        if not 0.0 <= self.state_dropout < 1.0:
            raise ModelConfigError(f"state_dropout {self.state_dropout} must be a probability in [0, 1)")
        if self.state_input not in STATE_INPUTS:
            raise ModelConfigError(f"state_input {self.state_input!r} must be one of {', '.join(STATE_INPUTS)}")
        if self.state_input == "hidden" and self.uses_discrete_state and not self.fast:
            raise ModelConfigError("state_input 'hidden' needs pi0 (continuous state) or pi0-FAST (state tokens "
                                   "it can mask); this model reads a discretised state in its prompt")
        if self.image_crop is not None:
            if len(self.image_crop) != 4:
                raise ModelConfigError(f"image_crop {self.image_crop} must be (top, left, height, width) fractions")
            top, left, height, width = self.image_crop
            if not (0 <= top < 1 and 0 <= left < 1 and 0 < height and 0 < width
                    and top + height <= 1 + 1e-9 and left + width <= 1 + 1e-9):
                raise ModelConfigError(
                    f"image_crop {self.image_crop} is not a window inside the image; give (top, left, height, width) "
                    "as fractions with top + height <= 1 and left + width <= 1"
                )
        if img.width % img.num_heads:
            raise ModelConfigError(f"SigLIP width {img.width} is not divisible by num_heads {img.num_heads}")

    @property
    def family(self) -> ModelFamily:
        """The model family of ``model_type``: what differs between kinds of model (:mod:`pi0cli.models.families`)."""
        return family(self.model_type)

    @property
    def pi05(self) -> bool:
        return self.model_type == "pi05"

    @property
    def fast(self) -> bool:
        """pi0-FAST (autoregressive, FAST action tokens) rather than flow matching."""
        return self.model_type == "pi0_fast"

    @property
    def llm_remat(self) -> RematPolicy:
        """The language model's (both experts') remat policy, ``remat_llm`` or the ``remat`` default."""
        return self.remat_llm or ("nothing" if self.remat else "none")

    @property
    def vision_remat(self) -> RematPolicy:
        """The vision tower's remat policy, ``remat_vision`` or the ``remat`` default."""
        return self.remat_vision or ("nothing" if self.remat else "none")

    @property
    def vlm(self) -> GemmaConfig:
        return gemma_variant(self.paligemma_variant)

    @property
    def expert(self) -> GemmaConfig:
        return gemma_variant(self.action_expert_variant)

    @property
    def siglip(self) -> SigLIPConfig:
        return siglip_variant(self.siglip_variant)

    @property
    def token_len(self) -> int:
        if self.max_token_len is not None:
            return self.max_token_len
        return self.family.default_token_len

    @property
    def uses_discrete_state(self) -> bool:
        return self.family.discrete_state if self.discrete_state_input is None else self.discrete_state_input

    @property
    def tokens_per_image(self) -> int:
        h, w = self.image_resolution
        return (h // self.siglip.patch_size) * (w // self.siglip.patch_size)

    @property
    def prefix_len(self) -> int:
        return len(self.image_keys) * self.tokens_per_image + self.token_len

    @property
    def suffix_len(self) -> int:
        """Tokens after the prefix: pi0's state and action tokens (pi0-FAST: 0, its actions are text tokens)."""
        return self.family.suffix_len(self)


_TINY = Pi0Config(
    model_type="pi0",
    paligemma_variant="tiny",
    action_expert_variant="tiny_expert",
    siglip_variant="tiny",
    dtype="float32",
    action_dim=8,
    action_horizon=4,
    max_token_len=8,
    image_resolution=(32, 32),
    remat=False,
)
_FAST_TINY = dataclasses.replace(_TINY, model_type="pi0_fast", image_keys=FAST_IMAGE_KEYS, max_token_len=32)

#: Named model presets.
PRESETS: dict[str, Pi0Config] = {
    "pi0": Pi0Config(model_type="pi0"),
    "pi05": Pi0Config(model_type="pi05"),
    # LoRA runs chunk their MLPs (256 tokens): one chunk's 16k-wide hidden activations live, not the batch's.
    "pi0_lora": Pi0Config(model_type="pi0", paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora",
                          mlp_chunk=256),
    "pi05_lora": Pi0Config(
        model_type="pi05", paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora", mlp_chunk=256
    ),
    "pi0_tiny": _TINY,
    "pi05_tiny": dataclasses.replace(_TINY, model_type="pi05"),
    "pi0_small": dataclasses.replace(_TINY, paligemma_variant="small", action_expert_variant="small_expert",
                                     siglip_variant="small", image_resolution=(64, 64)),
    "pi0_tiny_lora": dataclasses.replace(_TINY, paligemma_variant="tiny_lora",
                                         action_expert_variant="tiny_expert_lora"),
    # pi0-FAST (reference defaults: action_dim 32, horizon 32, max_token_len 250).
    "pi0_fast": Pi0Config(model_type="pi0_fast", action_horizon=32),
    "pi0_fast_lora": Pi0Config(model_type="pi0_fast", paligemma_variant="gemma_2b_lora", action_horizon=32),
    "pi0_fast_tiny": _FAST_TINY,
    "pi0_fast_tiny_lora": dataclasses.replace(_FAST_TINY, paligemma_variant="tiny_lora"),
}


def preset(name: str, **overrides) -> Pi0Config:
    """The named preset, with optional field overrides (e.g. ``dtype="float32"``)."""
    if name not in PRESETS:
        raise UnknownNameError("model preset", name, PRESETS)
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
