"""The data pipeline between a robot (or its dataset) and a pi0 / pi0.5 model, for training and inference.

Assembled from an embodiment, a model config and norm stats (reference order)::

    training inputs:  dataset row -> repack (embodiment key map, plus prompt and the action padding mask)
                      -> embodiment inputs -> delta actions -> normalize -> model inputs
    inference inputs: observation -> embodiment inputs -> delta actions (no-op without actions) -> normalize
                      -> model inputs (which fill in the default prompt for a request without one)
    outputs:          {"state", "actions"} -> unnormalize -> absolute actions -> embodiment outputs

Model inputs = resize-with-pad to the model's resolution, tokenize the prompt (pi0.5 with discrete state:
the normalised, unpadded state goes into the prompt), zero-pad state and actions to the model's action_dim,
drop strings. The result per example is what :meth:`pi0cli.models.observation.Observation.from_dict` takes::

    {"image": {slot: uint8 [h, w, 3]}, "image_mask": {slot: bool}, "state": float32 [action_dim],
     "tokenized_prompt": int32 [token_len], "tokenized_prompt_mask": bool [token_len],
     "actions": float32 [H, action_dim], "actions_is_pad": bool [H]}     (the last two when training)

What differs between kinds of model is the model family's (``model.family``, :mod:`pi0cli.models.families`):
the model step (its camera slots and token layout: pi0-FAST's cameras are ``base_0_rgb``, ``base_1_rgb``,
``wrist_0_rgb`` and its prompt, state and action chunk are one token sequence, see
:mod:`pi0cli.models.families.pi0_fast`), whether the state is padded to ``action_dim``, the first output step
(pi0-FAST decodes its generated tokens, adding ``decode_failures`` and ``action_tokens``), and quantile
normalisation (every built-in family but pi0, the reference rule). No JAX here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np

from pi0cli.embodiment import is_wrist_slot
from pi0cli.errors import NormStatsError, Pi0Error
from pi0cli.normstats import NormStats
from pi0cli.transforms import (
    AbsoluteActions,
    Compose,
    Data,
    DeltaActions,
    KeepKeys,
    Normalize,
    Repack,
    Transform,
    Unnormalize,
    compose,
    crop_fraction,
    pad_to_dim,
    resize_with_pad,
)

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment
    from pi0cli.models.config import Pi0Config
    from pi0cli.models.families import ModelFamily
    from pi0cli.models.tokenizer import FASTTokenizer

#: The action padding mask in pipeline data (lerobot calls it ``<action column>_is_pad``).
PAD_KEY = "actions_is_pad"


class PromptTokenizer(Protocol):
    """What the pipeline needs of a prompt tokenizer (:class:`pi0cli.models.tokenizer.PaligemmaTokenizer`)."""

    max_len: int

    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


class PipelineError(Pi0Error, ValueError):
    """An embodiment, model config and norm stats that do not fit together."""


def uses_quantile_norm(model_type: str) -> bool:
    """Whether the family of ``model_type`` normalises with quantiles (the reference: every type but pi0)."""
    from pi0cli.models.families import family

    return family(model_type).quantile_norm


def model_family(model: Pi0Config) -> ModelFamily:
    """The family of a model config (one loaded from JSON holds ``model_type`` too)."""
    from pi0cli.models.families import family

    return family(model.model_type)


class TokenLayout(Protocol):
    """A model family's camera slots and token sequence, when they are not pi0's (``ModelInputs.layout``)."""

    def slots(self, images: dict[str, np.ndarray], masks: dict[str, np.ndarray]
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]: ...

    def fields(self, inputs: ModelInputs, data: Data, out: Data, state: np.ndarray) -> Data: ...


@dataclasses.dataclass(frozen=True)
class RepackRow:
    """Dataset row -> robot observation with ``actions``, ``prompt`` (the episode task) and the pad mask."""

    repack: Repack
    pad_column: str

    def __call__(self, data: Data) -> Data:
        out = self.repack(data)
        if "prompt" in data:
            out["prompt"] = data["prompt"]
        elif "task" in data:
            out["prompt"] = data["task"]
        if self.pad_column in data:
            out[PAD_KEY] = np.asarray(data[self.pad_column], dtype=bool)
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class ModelInputs:
    """Model-side input transforms: crop (non-wrist cameras, when the model has ``image_crop``), resize-with-pad,
    tokenize, pad to the model dims, drop strings. ``layout``: a model family's own camera slots and token
    sequence (None: pi0's), see :meth:`pi0cli.models.families.ModelFamily.model_inputs`."""

    resolution: tuple[int, int]
    action_dim: int
    action_horizon: int
    tokenizer: PromptTokenizer | FASTTokenizer | Any | None = None
    discrete_state: bool = False
    default_prompt: str | None = None
    image_crop: tuple[float, float, float, float] | None = None
    layout: TokenLayout | None = None

    def __call__(self, data: Data) -> Data:
        height, width = self.resolution
        masks = {slot: np.asarray(m, dtype=bool) for slot, m in data["image_mask"].items()}
        images = {}
        for slot, img in data["image"].items():
            img = np.asarray(img)
            mask = masks.get(slot)
            if mask is not None and mask.ndim == 0 and not mask and not img.any():
                # An absent camera's zero image stays zero when resized: skip the resize.
                images[slot] = np.zeros((*img.shape[:-3], height, width, img.shape[-1]), dtype=img.dtype)
            else:
                if self.image_crop is not None and not is_wrist_slot(slot):
                    img = crop_fraction(img, self.image_crop)
                images[slot] = resize_with_pad(img, height, width)
        if self.layout is not None:
            images, masks = self.layout.slots(images, masks)
        out: Data = {"image": images, "image_mask": masks}
        state = np.asarray(data["state"], dtype=np.float32)
        if self.layout is not None:
            return self.layout.fields(self, data, out, state)
        if state.shape[-1] > self.action_dim:
            raise PipelineError(f"state has {state.shape[-1]} dims but the model's action_dim is {self.action_dim}")
        if self.tokenizer is not None:
            tokenizer = cast("PromptTokenizer", self.tokenizer)
            tokens, mask = tokenizer.tokenize(self.prompt(data), state if self.discrete_state else None)
            out["tokenized_prompt"], out["tokenized_prompt_mask"] = tokens, mask
        out["state"] = pad_to_dim(state, self.action_dim).astype(np.float32)
        if "actions" in data:
            actions = np.asarray(data["actions"], dtype=np.float32)
            if actions.ndim < 2 or actions.shape[-2] != self.action_horizon:
                raise PipelineError(
                    f"actions have shape {actions.shape} but the model predicts chunks of {self.action_horizon}; "
                    f"open the dataset with action_horizon={self.action_horizon}"
                )
            if actions.shape[-1] > self.action_dim:
                raise PipelineError(f"actions have {actions.shape[-1]} dims but the model's action_dim is "
                                    f"{self.action_dim}")
            out.update(self.padded_actions(data, actions))
        return out

    def prompt(self, data: Data) -> str:
        """The example's prompt, else the default one; a clear error when there is neither."""
        prompt = data.get("prompt", self.default_prompt)
        if prompt is None:
            raise PipelineError("no prompt: the data has none and there is no default prompt; send 'prompt'")
        return str(prompt)

    def padded_actions(self, data: Data, actions: np.ndarray) -> Data:
        """``actions`` zero-padded to ``action_dim`` and the chunk's padding mask (all False when absent)."""
        pad = data.get(PAD_KEY)
        return {"actions": pad_to_dim(actions, self.action_dim).astype(np.float32),
                PAD_KEY: (np.zeros(actions.shape[:-1], dtype=bool) if pad is None
                          else np.asarray(pad, dtype=bool).reshape(actions.shape[:-1]))}


@dataclasses.dataclass(frozen=True, eq=False)
class Pipeline:
    """Every transform between one embodiment and one model configuration (see the module docstring)."""

    embodiment: Embodiment
    model: Pi0Config
    norm_stats: Mapping[str, NormStats] | None
    tokenizer: PromptTokenizer | FASTTokenizer | None = None
    delta_action_mask: tuple[bool, ...] | None = None
    default_prompt: str | None = None

    @classmethod
    def create(cls, embodiment: Embodiment, model: Pi0Config, norm_stats: Mapping[str, NormStats] | None, *,
               tokenizer: PromptTokenizer | FASTTokenizer | None = None,
               delta_action_mask: tuple[bool, ...] | None = None, default_prompt: str | None = None) -> Pipeline:
        """Check that the pieces fit; ``delta_action_mask`` overrides the embodiment's (``()`` turns it off)."""
        emb = embodiment
        family = model_family(model)
        family.check_tokenizer(tokenizer)
        # A family that reads the state another way (pi0-FAST: as text) needs only the actions to fit action_dim.
        for what, dim in (("state", emb.state_dim if family.pads_state else 0), ("action", emb.action_dim)):
            if dim > model.action_dim:
                raise PipelineError(
                    f"embodiment {emb.name!r} has {dim} {what} dims but the model's action_dim is {model.action_dim}; "
                    f"use a model config with action_dim >= {dim}"
                )
        mask = emb.delta_action_mask if delta_action_mask is None else (tuple(delta_action_mask) or None)
        if mask is not None and len(mask) > min(emb.state_dim, emb.action_dim):
            raise PipelineError(f"delta action mask of {len(mask)} dims is longer than {emb.name!r}'s state/actions")
        if norm_stats is not None:
            expected = {"state": emb.state_dim, "actions": emb.action_dim}
            for key, dim in expected.items():
                stats = norm_stats.get(key)
                if stats is not None and stats.dim != dim:
                    raise NormStatsError(
                        f"norm stats {key!r} have {stats.dim} dims but embodiment {emb.name!r} has {dim}; "
                        f"recompute them with `pi0 norm-stats {emb.name}`"
                    )
                if stats is not None and family.quantile_norm and stats.q01 is None:
                    raise NormStatsError(
                        f"{model.model_type} uses quantile normalisation but the {key!r} norm stats have no q01/q99; "
                        f"recompute them with `pi0 norm-stats {emb.name}`"
                    )
        if tokenizer is not None and tokenizer.max_len != model.token_len:
            raise PipelineError(f"tokenizer max_len {tokenizer.max_len} differs from the model's token_len "
                                f"{model.token_len}")
        return cls(emb, model, None if norm_stats is None else dict(norm_stats), tokenizer, mask,
                   default_prompt if default_prompt is not None else emb.default_prompt)

    # ------------------------------------------------------------------------------------------ pieces

    @property
    def family(self) -> ModelFamily:
        return model_family(self.model)

    @property
    def use_quantiles(self) -> bool:
        return self.family.quantile_norm

    def _normalize(self) -> Transform | None:
        return None if self.norm_stats is None else Normalize(self.norm_stats, use_quantiles=self.use_quantiles)

    def _model_inputs(self) -> Transform:
        return self.family.model_inputs(self.model, self.tokenizer, default_prompt=self.default_prompt)

    def robot_inputs(self) -> Compose:
        """Embodiment inputs then delta actions (what norm stats are computed over)."""
        return compose(KeepKeys(self.embodiment.inputs, (PAD_KEY,)), DeltaActions(self.delta_action_mask))

    # ------------------------------------------------------------------------------------------ flows

    def training_inputs(self) -> Compose:
        """Dataset row (from :class:`pi0cli.data.lerobot.LeRobotFrames`) -> one model example."""
        if self.norm_stats is None:
            raise NormStatsError(
                f"training needs norm stats; compute them with `pi0 norm-stats {self.embodiment.name}`")
        pad_column = f"{self.embodiment.action_key}_is_pad"
        return compose(RepackRow(self.embodiment.repack, pad_column), self.robot_inputs(), self._normalize(),
                       self._model_inputs())

    def inference_inputs(self) -> Compose:
        """Robot observation -> one model example (no actions)."""
        # The default prompt is filled in by the model inputs (one place, for training rows and requests alike).
        return compose(self.robot_inputs(), self._normalize(), self._model_inputs())

    def outputs(self, *, fast_decode: Literal["strict", "lenient"] = "strict") -> Compose:
        """``{"state": model-input state, "actions": model actions [H, action_dim]}`` -> robot actions
        (``fast_decode``: pi0-FAST's token decoding, see :class:`~pi0cli.models.tokenizer.FastActionOutputs`).
        The family's output step comes first (pi0-FAST: tokens -> actions); the keys it adds reach the client."""
        unnormalize = None if self.norm_stats is None else Unnormalize(
            {k: v for k, v in self.norm_stats.items() if k in ("state", "actions")}, use_quantiles=self.use_quantiles,
            strict=True)
        decode, keep = self.family.output_transform(self.model, self.tokenizer, self.embodiment, decode=fast_decode)
        robot = KeepKeys(self.embodiment.outputs, keep) if keep else self.embodiment.outputs
        return compose(decode, unnormalize, AbsoluteActions(self.delta_action_mask), robot)
