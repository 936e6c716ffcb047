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
from typing import TYPE_CHECKING

import numpy as np

from pi0cli.errors import NormStatsError
from pi0cli.models.fast_decode import DEFAULT_FAST_DECODE
from pi0cli.models.inputs import PAD_KEY, ModelInputs, PipelineError, PromptTokenizer, TokenLayout
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
)

__all__ = ["PAD_KEY", "ModelInputs", "Pipeline", "PipelineError", "PromptTokenizer", "TokenLayout",
           "uses_quantile_norm"]

if TYPE_CHECKING:
    from pi0cli.embodiment import Embodiment
    from pi0cli.models.config import Pi0Config
    from pi0cli.models.families import ModelFamily
    from pi0cli.models.tokenizer import FastDecode, FASTTokenizer

def uses_quantile_norm(model_type: str) -> bool:
    """Whether the family of ``model_type`` normalises with quantiles (the reference: every type but pi0)."""
    from pi0cli.models.families import family

    return family(model_type).quantile_norm


def model_family(model: Pi0Config) -> ModelFamily:
    """The family of a model config (one loaded from JSON holds ``model_type`` too)."""
    from pi0cli.models.families import family

    return family(model.model_type)


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

    def outputs(self, *, fast_decode: FastDecode = DEFAULT_FAST_DECODE) -> Compose:
        """``{"state": model-input state, "actions": model actions [H, action_dim]}`` -> robot actions
        (``fast_decode``: pi0-FAST's token decoding, see :class:`~pi0cli.models.tokenizer.FastActionOutputs`).
        The family's output step comes first (pi0-FAST: tokens -> actions); the keys it adds reach the client."""
        unnormalize = None if self.norm_stats is None else Unnormalize(
            {k: v for k, v in self.norm_stats.items() if k in ("state", "actions")}, use_quantiles=self.use_quantiles,
            strict=True)
        decode, keep = self.family.output_transform(self.model, self.tokenizer, self.embodiment, decode=fast_decode)
        robot = KeepKeys(self.embodiment.outputs, keep) if keep else self.embodiment.outputs
        return compose(decode, unnormalize, AbsoluteActions(self.delta_action_mask), robot)
