"""The model-side input step: one robot example (after the embodiment's inputs and normalisation) -> what the
model takes. Crop (non-wrist cameras, when the model has ``image_crop``), resize-with-pad to the model's
resolution, tokenize the prompt (with the discrete state when the model reads it), pad state and actions to the
model's ``action_dim``; a model family whose cameras or token sequence differ supplies a :class:`TokenLayout`
(pi0-FAST: :class:`pi0cli.models.families.pi0_fast.FastTokenLayout`).

It lives in the model layer, beside the families that build it (``ModelFamily.model_inputs``); the pipeline
(:mod:`pi0cli.pipeline`) puts it last in its chains and re-exports its names. numpy only.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from pi0cli.embodiment import is_wrist_slot
from pi0cli.errors import Pi0Error
from pi0cli.transforms import Data, crop_fraction, pad_to_dim, resize_with_pad

if TYPE_CHECKING:
    from pi0cli.models.tokenizer import FASTTokenizer

#: The action padding mask in pipeline data (lerobot calls it ``<action column>_is_pad``).
PAD_KEY = "actions_is_pad"

Array = np.ndarray[Any, Any]


class PipelineError(Pi0Error, ValueError):
    """An embodiment, model config and norm stats that do not fit together."""


class PromptTokenizer(Protocol):
    """What the pipeline needs of a prompt tokenizer (:class:`pi0cli.models.tokenizer.PaligemmaTokenizer`)."""

    max_len: int

    def tokenize(self, prompt: str, state: Array | None = None) -> tuple[Array, Array]: ...


class TokenLayout(Protocol):
    """A model family's camera slots and token sequence, when they are not pi0's (``ModelInputs.layout``)."""

    def slots(self, images: dict[str, Array], masks: dict[str, Array]) -> tuple[dict[str, Array], dict[str, Array]]:
        ...

    def fields(self, inputs: ModelInputs, data: Data, out: Data, state: Array) -> Data: ...


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
