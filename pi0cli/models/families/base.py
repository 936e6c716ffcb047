"""``FamilyBase``: the defaults a model family starts from (a pi0-style model: the three pi0 cameras, a prompt
tokenizer, the state padded to ``action_dim``, actions straight out of the sampler, no LeRobot counterpart).

A new family subclasses it, sets ``name`` / ``description`` and overrides :meth:`build` (and whatever else
differs); ``register_family(MyFamily())`` makes ``Pi0Config(model_type=MyFamily.name)`` valid everywhere.
Nothing heavy is imported at module level (see :mod:`pi0cli.models.families`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pi0cli.models.families import (
    FamilyError,
    LeRobotLayout,
    PolicyModel,
    SampleFn,
    SamplerOptions,
    TrainingData,
)

if TYPE_CHECKING:
    import jax
    from flax import nnx

    from pi0cli.embodiment import Embodiment
    from pi0cli.models.config import FreezeMode, Pi0Config
    from pi0cli.models.rtc import RTCInputs
    from pi0cli.models.tokenizer import PaligemmaTokenizer
    from pi0cli.transforms import Transform

#: The pi0 camera slots (``pi0cli.models.config.IMAGE_KEYS`` is this tuple).
PI0_IMAGE_KEYS: tuple[str, ...] = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
ALL_FREEZE_MODES: tuple[FreezeMode, ...] = ("full", "lora_vlm", "lora_expert", "lora_both")


class FamilyBase:
    """Defaults for :class:`pi0cli.models.families.ModelFamily` (see the module docstring)."""

    name: str = ""
    description: str = ""
    image_keys: tuple[str, ...] = PI0_IMAGE_KEYS
    default_token_len: int = 48
    has_action_expert: bool = True
    discrete_state: bool = False
    quantile_norm: bool = True
    pads_state: bool = True
    supports_rtc: bool = False
    supports_action_mask: bool = False
    autoregressive: bool = False
    lerobot_type: str | None = None
    lerobot_layout: LeRobotLayout | None = None

    def __repr__(self) -> str:
        return f"<model family {self.name!r}>"

    # ------------------------------------------------------------------------------------------ config
    @property
    def freeze_modes(self) -> tuple[FreezeMode, ...]:
        return ALL_FREEZE_MODES if self.has_action_expert else ("full", "lora_vlm")

    def suffix_len(self, config: Pi0Config) -> int:
        return 0

    # ------------------------------------------------------------------------------------------ recipe
    def freeze_mode(self, config: Pi0Config) -> FreezeMode:
        """Freeze the LLM weights of whichever experts carry LoRA adapters (the reference's choice); without
        an action expert its variant is ignored."""
        vlm = config.vlm.attn_lora or config.vlm.ffn_lora
        expert = (config.expert.attn_lora or config.expert.ffn_lora) if self.has_action_expert else None
        modes: dict[tuple[bool, bool], FreezeMode] = {
            (False, False): "full", (True, False): "lora_vlm", (False, True): "lora_expert", (True, True): "lora_both"}
        return modes[(vlm is not None, expert is not None)]

    def lora_grad_accum_steps(self, config: Pi0Config, batch_size: int) -> int:
        return 1

    # ------------------------------------------------------------------------------------------ model
    def build(self, config: Pi0Config, rngs: nnx.Rngs) -> PolicyModel:
        raise NotImplementedError(f"model family {self.name!r} does not say how to build its model")

    def abstract_batch(self, config: Pi0Config, batch_size: int) -> dict[str, Any]:
        import jax
        import jax.numpy as jnp

        spec: Any = jax.ShapeDtypeStruct  # untyped in JAX's stubs
        h, w = config.image_resolution
        b, length = batch_size, config.token_len
        return {
            "image": {k: spec((b, h, w, 3), jnp.uint8) for k in config.image_keys},
            "image_mask": {k: spec((b,), jnp.bool_) for k in config.image_keys},
            "state": spec((b, config.action_dim), jnp.float32),
            "tokenized_prompt": spec((b, length), jnp.int32),
            "tokenized_prompt_mask": spec((b, length), jnp.bool_),
            "actions": spec((b, config.action_horizon, config.action_dim), jnp.float32),
        }

    # ------------------------------------------------------------------------------------------ data
    def check_tokenizer(self, tokenizer: object) -> None:
        return None

    def model_inputs(self, config: Pi0Config, tokenizer: Any, *, default_prompt: str | None) -> Transform:
        from pi0cli.models.inputs import ModelInputs

        height, width = config.image_resolution  # a JSON-loaded config may hold a list
        return ModelInputs((height, width), config.action_dim, config.action_horizon, tokenizer,
                           bool(config.uses_discrete_state), default_prompt, config.image_crop)

    def output_transform(self, config: Pi0Config, tokenizer: Any, embodiment: Embodiment, *,
                         decode: str) -> tuple[Transform | None, tuple[str, ...]]:
        return None, ()

    # ------------------------------------------------------------------------------------------ tokenizer assets
    def sequence_tokenizer(self, config: Pi0Config, prompt: PaligemmaTokenizer, asset_dirs: Sequence[Path], *,
                           search: Path | None = None, data: TrainingData | None = None,
                           warn: Callable[[str], None] | None = None) -> Any:
        return prompt

    def tokenizer_files(self, tokenizer: Any, asset_id: str) -> dict[str, bytes]:
        return {}

    # ------------------------------------------------------------------------------------------ serving
    def sampler(self, config: Pi0Config, options: SamplerOptions) -> SampleFn:
        """``module.sample_actions(rng, observation)`` with the module's own defaults."""
        from pi0cli.models.observation import Observation

        def sample(module: Any, rng: jax.Array, batch: Mapping[str, Any], rtc: RTCInputs | None) -> jax.Array:
            return cast("jax.Array", module.sample_actions(rng, Observation.from_dict(batch)))

        return sample

    # ------------------------------------------------------------------------------------------ conversion
    def lerobot_config(self, config: Pi0Config, **fields: Any) -> Any:
        raise FamilyError(f"LeRobot has no {self.name} policy: a {self.name} checkpoint converts to pi0 or openpi")

    def lerobot_modeling(self) -> Any:
        raise FamilyError(f"LeRobot's PyTorch {self.name} is not run here: compare {self.name} checkpoints in JAX")

    def lerobot_model_class(self, module: Any) -> Any:
        raise FamilyError(f"LeRobot's PyTorch {self.name} is not run here: compare {self.name} checkpoints in JAX")

    def lerobot_sample_args(self, obs: Any) -> tuple[Any, ...]:
        return ()
