"""pi0-FAST: one Gemma with a tied LM head, autoregressive over FAST action tokens (no action expert).

What differs from pi0 (:mod:`pi0cli.models.families.pi0`): the cameras are ``base_0_rgb``, ``base_1_rgb``,
``wrist_0_rgb`` (:func:`pi0cli.models.tokenizer.fast_image_slots` maps an embodiment's pi0 slots onto them);
the prompt, the normalised unpadded state and (training) the normalised unpadded action chunk are one token
sequence (:class:`FastTokenLayout`, :class:`pi0cli.models.tokenizer.FASTTokenizer`); the sampler decodes up
to ``max_decoding_steps`` tokens and the output transform turns them back into actions
(:class:`pi0cli.models.tokenizer.FastActionOutputs`, which adds ``decode_failures`` and ``action_tokens``);
the FAST tokenizer is an asset beside the norm stats (``assets/<asset_id>/fast_tokenizer/``) that travels with
the checkpoint; the LoRA recipe freezes the VLM only (``lora_vlm``); LeRobot's ``pi0_fast`` holds the weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pi0cli.models.families import FamilyError, LeRobotLayout, SampleFn, SamplerOptions, TrainingData
from pi0cli.models.families.base import FamilyBase

#: numpy arrays of any shape and dtype
Array = np.ndarray[Any, Any]

if TYPE_CHECKING:
    import jax
    from flax import nnx

    from pi0cli.embodiment import Embodiment
    from pi0cli.models.config import Pi0Config
    from pi0cli.models.fast_tokenizer import FastActionTokenizer
    from pi0cli.models.inputs import ModelInputs
    from pi0cli.models.pi0_fast import Pi0FAST
    from pi0cli.models.rtc import RTCInputs
    from pi0cli.models.tokenizer import FASTTokenizer, PaligemmaTokenizer
    from pi0cli.transforms import Data, Transform


@dataclasses.dataclass(frozen=True)
class FastTokenLayout:
    """pi0-FAST's camera slots and token sequence, the layout hook of :class:`pi0cli.pipeline.ModelInputs`."""

    def slots(self, images: dict[str, Array], masks: dict[str, Array]) -> tuple[dict[str, Array], dict[str, Array]]:
        from pi0cli.models.tokenizer import fast_image_slots

        return fast_image_slots(images, masks)

    def fields(self, inputs: ModelInputs, data: Data, out: Data, state: Array) -> Data:
        """Prompt, state and (training) actions as one token sequence; the state stays unpadded."""
        from pi0cli.models.inputs import PipelineError

        prompt = inputs.prompt(data)
        actions = data.get("actions")
        if actions is not None:
            actions = np.asarray(actions, dtype=np.float32)
            if actions.ndim != 2 or actions.shape[0] != inputs.action_horizon:
                raise PipelineError(
                    f"actions have shape {actions.shape} but the model predicts chunks of {inputs.action_horizon}; "
                    f"open the dataset with action_horizon={inputs.action_horizon}"
                )
        if inputs.tokenizer is None or not hasattr(inputs.tokenizer, "extract_actions"):
            raise PipelineError("a pi0-FAST model needs a FASTTokenizer")
        tokenizer = cast("FASTTokenizer", inputs.tokenizer)
        tokens, mask, ar, loss = tokenizer.tokenize(prompt, state, actions)
        out.update(tokenized_prompt=tokens, tokenized_prompt_mask=mask, token_ar_mask=ar, token_loss_mask=loss,
                   state=state, state_token_mask=tokenizer.state_token_mask(prompt, state))
        if actions is not None:  # carried for the train step's batch layout (the model reads the tokens)
            out.update(inputs.padded_actions(data, actions))
        return out


class Pi0FastFamily(FamilyBase):
    name = "pi0_fast"
    description = "pi0-FAST: autoregressive over FAST action tokens (one Gemma, no action expert)"
    image_keys: tuple[str, ...] = ("base_0_rgb", "base_1_rgb", "wrist_0_rgb")
    default_token_len = 250
    has_action_expert = False
    pads_state = False  # the state is read as text: only the actions must fit action_dim
    autoregressive = True
    lerobot_type: str | None = "pi0_fast"
    #: LeRobot's pi0_fast: PaliGemma's names only (no action expert, no projections)
    lerobot_layout: LeRobotLayout | None = LeRobotLayout()

    # ------------------------------------------------------------------------------------------ model
    def build(self, config: Pi0Config, rngs: nnx.Rngs) -> Pi0FAST:
        from pi0cli.models.pi0_fast import Pi0FAST

        return Pi0FAST(config, rngs)

    def abstract_batch(self, config: Pi0Config, batch_size: int) -> dict[str, Any]:
        import jax
        import jax.numpy as jnp

        shape = (batch_size, config.token_len)
        spec: Any = jax.ShapeDtypeStruct  # untyped in JAX's stubs
        return super().abstract_batch(config, batch_size) | {
            "token_ar_mask": spec(shape, jnp.int32), "token_loss_mask": spec(shape, jnp.bool_),
            "state_token_mask": spec(shape, jnp.bool_)}

    # ------------------------------------------------------------------------------------------ data
    def check_tokenizer(self, tokenizer: object) -> None:
        if not hasattr(tokenizer, "extract_actions"):
            from pi0cli.models.inputs import PipelineError

            raise PipelineError("a pi0-FAST model needs a FASTTokenizer (prompt tokenizer + FAST action tokenizer)")

    def model_inputs(self, config: Pi0Config, tokenizer: Any, *, default_prompt: str | None) -> Transform:
        from pi0cli.models.inputs import ModelInputs

        height, width = config.image_resolution
        return ModelInputs((height, width), config.action_dim, config.action_horizon, tokenizer,
                           bool(config.uses_discrete_state), default_prompt, config.image_crop,
                           layout=FastTokenLayout())

    def output_transform(self, config: Pi0Config, tokenizer: Any, embodiment: Embodiment, *,
                         decode: str) -> tuple[Transform | None, tuple[str, ...]]:
        from pi0cli.models.tokenizer import ACTION_TOKENS_KEY, DECODE_FAILURES_KEY, DECODE_RULE_KEY, FastActionOutputs

        self.check_tokenizer(tokenizer)
        step = FastActionOutputs(tokenizer, config.action_horizon, embodiment.action_dim, pad_to=config.action_dim,
                                 decode=decode)  # type: ignore[arg-type]  # FastActionOutputs checks the rule
        return step, (DECODE_FAILURES_KEY, ACTION_TOKENS_KEY, DECODE_RULE_KEY)

    # ------------------------------------------------------------------------------------------ tokenizer assets
    def sequence_tokenizer(self, config: Pi0Config, prompt: PaligemmaTokenizer, asset_dirs: Sequence[Path], *,
                           search: Path | None = None, data: TrainingData | None = None,
                           warn: Callable[[str], None] | None = None) -> FASTTokenizer:
        """The FAST tokenizer of ``<asset dir>/fast_tokenizer/`` (written by ``pi0 norm-stats --fast-tokenizer``
        and carried by every pi0-FAST checkpoint), else the only one under ``search``, else one fitted on the
        training ``data`` now. The one loader: training and serving both come here."""
        from pi0cli.models.fast_tokenizer import ASSET_DIR, PROCESSOR_CONFIG_FILE, FastActionTokenizer
        from pi0cli.models.tokenizer import FASTTokenizer, fast_vocab_that_fits

        def wrap(fast: FastActionTokenizer) -> FASTTokenizer:
            return FASTTokenizer(prompt, fast, max_len=config.token_len, vocab_size=config.vlm.vocab_size)

        for directory in asset_dirs:
            if (Path(directory) / ASSET_DIR).is_dir():
                return wrap(FastActionTokenizer.load(Path(directory) / ASSET_DIR))
        found = (sorted(Path(search).rglob(f"{ASSET_DIR}/{PROCESSOR_CONFIG_FILE}"))
                 if search is not None and Path(search).is_dir() else [])
        if len(found) == 1:
            return wrap(FastActionTokenizer.load(found[0].parent))
        if data is not None:
            vocab = fast_vocab_that_fits(config.vlm.vocab_size, prompt.vocab_size)
            if warn is not None:
                warn(f"no FAST tokenizer beside the norm stats; fitting one on {data.source} (vocabulary {vocab}); "
                     "`pi0 norm-stats --fast-tokenizer` writes one to reuse")
            fitted = self._fit(data, vocab)
            return wrap(fitted)
        where = " or ".join(str(Path(d) / ASSET_DIR) for d in asset_dirs) or str(search)
        raise FamilyError(f"no FAST tokenizer at {where}; copy the one the model was trained with there "
                          "(`pi0 norm-stats --fast-tokenizer` writes one)")

    def _fit(self, data: TrainingData, vocab_size: int) -> FastActionTokenizer:
        """A FAST tokenizer fitted on the training data's action chunks, quantile-normalised as the model sees them."""
        from pi0cli.models.fast_tokenizer import FastTokenizerError, fit_from_blocks
        from pi0cli.transforms import Normalize

        if "actions" not in data.norm_stats:
            raise FastTokenizerError("the norm stats have no 'actions' entry; compute them first (pi0 norm-stats)")
        normalize = Normalize({"actions": data.norm_stats["actions"]}, use_quantiles=self.quantile_norm)
        fitted, _ = fit_from_blocks(data.action_blocks(),
                                    normalize=lambda a: np.asarray(normalize({"actions": a})["actions"]),
                                    vocab_size=vocab_size)
        return fitted

    def tokenizer_files(self, tokenizer: Any, asset_id: str) -> dict[str, bytes]:
        from pi0cli.models.fast_tokenizer import ASSET_DIR

        files: dict[str, bytes] = tokenizer.fast.files(f"{asset_id}/{ASSET_DIR}/")
        return files

    # ------------------------------------------------------------------------------------------ serving
    def sampler(self, config: Pi0Config, options: SamplerOptions) -> SampleFn:
        """Up to ``max_decoding_steps`` tokens, greedy or sampled at ``temperature`` (under ``options.grammar``
        for constrained decoding); the output transform decodes them."""
        from pi0cli.models.observation import Observation

        steps, temperature, grammar = options.max_decoding_steps, options.temperature, options.grammar

        def sample(module: Any, rng: jax.Array, batch: Mapping[str, Any], rtc: RTCInputs | None) -> jax.Array:
            tokens: jax.Array = module.sample_actions(rng, Observation.from_dict(batch), max_decoding_steps=steps,
                                                      temperature=temperature, grammar=grammar)
            return tokens

        return sample

    # ------------------------------------------------------------------------------------------ LeRobot
    def lerobot_config(self, config: Pi0Config, **fields: Any) -> Any:
        from lerobot.policies.pi0_fast.configuration_pi0_fast import PI0FastConfig

        return PI0FastConfig(max_decoding_steps=256, **fields)



PI0_FAST = Pi0FastFamily()
