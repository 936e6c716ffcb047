"""Model families: one object per ``model_type`` owning everything that differs between kinds of model.

A family (:class:`ModelFamily`) says how to build its model (and the abstract batch a dry run compiles), its
camera slots and token layout (the model-side input transform), its output transform (pi0-FAST decodes
tokens), its sampler for serving, its freeze modes and LoRA recipe, its LeRobot names and classes, and its
tokenizer assets (pi0-FAST's FAST tokenizer). The code around it (``Pipeline``, ``Policy``, ``pi0 train``,
``pi0 convert``, the dry run and the presets) asks the family of a config (``config.family``) and never
branches on the model type.

Adding a model type is one module (a class on :class:`pi0cli.models.families.base.FamilyBase`, overriding
what differs) and one call, ``register_family(MyFamily())``; ``tests/models/test_model_family.py`` registers a
toy family that trains with ``pi0 train``'s library entry and is served by a real ``PolicyServer``.

Why the registry is this small module and the families live beside it: ``Pi0Config`` (the JAX-free contracts
layer) validates ``model_type`` against the registry and takes its defaults from the family, while a family's
methods reach the model code (which imports ``Pi0Config``), the pipeline and the converters. So the registry
imports nothing of pi0cli but :mod:`pi0cli.errors` (everything else only for types), and never imports a
family: that would be a circle (family -> model -> config -> registry -> family). It sits in the contracts
layer with the config; the families sit in the model layer (``tests/test_layering.py``) and import nothing
above it: what the layers above do differently per family is either data they read (``lerobot_layout``,
``supports_rtc``, ``quantile_norm``) or done in the model layer (the model-side input step,
:mod:`pi0cli.models.inputs`), and what a family needs from above is handed to it (the training data's
action chunks, ``TrainingData``; the real-time chunking inputs, built by the policy). The built-in families
are registered by ``pi0cli/models/__init__.py``, which Python runs before any ``pi0cli.models.*`` module
(this one included), so a lookup always sees them; their modules import nothing heavy (no JAX, not even the
config) until a method runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pi0cli.errors import Pi0Error, UnknownNameError

if TYPE_CHECKING:
    import jax
    from flax import nnx

    from pi0cli.embodiment import Embodiment
    from pi0cli.models.config import FreezeMode, Pi0Config
    from pi0cli.models.fast_grammar import ChunkGrammar
    from pi0cli.models.observation import Observation
    from pi0cli.models.rtc import RTCInputs
    from pi0cli.models.tokenizer import PaligemmaTokenizer
    from pi0cli.normstats import NormStats
    from pi0cli.transforms import Transform

__all__ = [
    "FamilyError", "ModelFamily", "PolicyModel", "LeRobotLayout", "SampleFn", "SamplerOptions",
    "TrainingData", "family", "family_names",
    "families", "register_family", "registered", "unregister_family",
]


class FamilyError(Pi0Error, ValueError):
    """A model family that cannot be registered, or a request a family cannot serve."""


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The dataset a training run reads, as a family that fits its tokenizer assets on it sees it (the training
    job reads it: the model layer reads no dataset)."""

    #: what to call it in messages (the dataset's root or repo id)
    source: str
    norm_stats: Mapping[str, NormStats]
    #: the dataset's action chunks ``[m, H, D]`` in model space (after the embodiment's inputs and delta
    #: actions, before normalisation), block by block
    action_blocks: Callable[[], Iterable[Any]]


@dataclasses.dataclass(frozen=True)
class LeRobotLayout:
    """How a family's parameters are named in LeRobot's PyTorch policy (read by
    :mod:`pi0cli.convert.lerobot_names`). Every family shares PaliGemma's names (SigLIP, the VLM, the
    projector)."""

    #: top-level ``Linear`` layers (``kernel``/``bias``), named alike on both sides
    projections: tuple[str, ...] = ()
    #: the action expert's norms: ``"scale"`` (RMSNorm weights), ``"adaptive"`` (adaRMS ``Dense`` layers), or
    #: None for a model without an action expert
    expert_norm: Literal["scale", "adaptive"] | None = None


class PolicyModel(Protocol):
    """What training and serving need of a model module (an ``nnx.Module``): its config and a loss.

    ``compute_loss(rng, obs, actions, train=..., noise=..., time=..., preprocessed=...)`` returns per-example
    losses (any shape with the batch first; the train step averages them). ``noise`` and ``time`` are
    flow-matching draws the train step makes for the whole batch under gradient accumulation; a family that
    draws none accepts and ignores them. ``preprocess(rng, obs, train)`` is the model's own input preparation
    (what ``preprocessed=True`` means has happened). Sampling is the family's business
    (:meth:`ModelFamily.sampler`)."""

    @property
    def config(self) -> Pi0Config: ...

    def preprocess(self, rng: jax.Array | None, obs: Observation, train: bool) -> Observation: ...

    def compute_loss(self, rng: jax.Array, obs: Observation, actions: jax.Array, *, train: bool = False,
                     noise: jax.Array | None = None, time: jax.Array | None = None,
                     preprocessed: bool = False) -> jax.Array: ...


#: ``sample(module, rng, batch, rtc) -> actions``: one jitted model call on a stacked model batch (the keys the
#: input transforms produce); ``rtc`` holds the real-time chunking inputs when the family ``supports_rtc``
#: (else None); "actions" are whatever the family's output transform takes (pi0-FAST: token ids).
SampleFn = Callable[[Any, "jax.Array", Mapping[str, Any], "RTCInputs | None"], "jax.Array"]


class SamplerOptions(Protocol):
    """The serving options a sampler may read (``Policy.from_model``'s keywords); a family ignores the others."""

    @property
    def num_steps(self) -> int: ...

    @property
    def max_decoding_steps(self) -> int: ...

    @property
    def temperature(self) -> float: ...

    @property
    def rtc_max_guidance(self) -> float | None: ...

    @property
    def grammar(self) -> ChunkGrammar | None: ...


class ModelFamily(Protocol):
    """Everything that differs between kinds of model (see the module docstring). JAX-free to hold: every
    method imports what it needs when called."""

    #: the ``model_type`` it is registered under
    name: str
    #: one line for listings and error messages
    description: str

    # --------------------------------------------------------------------------------- config (JAX-free)
    #: camera slots in the order their tokens enter the model (``Pi0Config.image_keys``' default)
    image_keys: tuple[str, ...]
    #: ``Pi0Config.token_len`` when ``max_token_len`` is None
    default_token_len: int
    #: whether ``action_expert_variant`` is a second expert that must match the VLM's head layout
    has_action_expert: bool
    #: ``Pi0Config.uses_discrete_state`` when ``discrete_state_input`` is None
    discrete_state: bool
    #: quantile normalisation (else mean/std)
    quantile_norm: bool
    #: whether the state is padded to ``action_dim`` (False: the model reads it another way, e.g. as text)
    pads_state: bool
    #: whether the sampler takes real-time chunking inputs
    supports_rtc: bool
    #: whether ``compute_loss`` takes an ``action_mask`` (mixtures mask the padded action dims out of the loss)
    supports_action_mask: bool
    #: whether the sampler decodes tokens (turned into actions by the output transform) rather than sampling
    #: continuous actions; ``pi0 convert --verify`` then compares the loss and the greedy tokens
    autoregressive: bool
    @property
    def freeze_modes(self) -> tuple[FreezeMode, ...]:
        """The freeze modes a train config may name (``models/freeze.py``)."""
        ...

    def suffix_len(self, config: Pi0Config) -> int:
        """Tokens after the prefix (images + text): pi0's state and action tokens, 0 for pi0-FAST."""
        ...

    # --------------------------------------------------------------------------------- training recipe
    def freeze_mode(self, config: Pi0Config) -> FreezeMode:
        """The freeze mode a model with ``config``'s LoRA variants trains with (the reference's choice)."""
        ...

    def lora_grad_accum_steps(self, config: Pi0Config, batch_size: int) -> int:
        """Micro-batches of a LoRA run of ``config`` at ``batch_size`` (the memory its presets were sized for)."""
        ...

    # --------------------------------------------------------------------------------- model
    def build(self, config: Pi0Config, rngs: nnx.Rngs) -> PolicyModel:
        """A fresh model (random weights from ``rngs``); under ``nnx.eval_shape`` an abstract one."""
        ...

    def abstract_batch(self, config: Pi0Config, batch_size: int) -> dict[str, Any]:
        """``jax.ShapeDtypeStruct``s of one training batch (what the dry run and the planner compile)."""
        ...

    # --------------------------------------------------------------------------------- data
    def check_tokenizer(self, tokenizer: object) -> None:
        """Raise ``PipelineError`` when ``tokenizer`` cannot make this family's token sequences."""
        ...

    def model_inputs(self, config: Pi0Config, tokenizer: Any, *, default_prompt: str | None) -> Transform:
        """The model-side input step: crop, resize, camera slots, tokens, padding (``Pipeline``'s last)."""
        ...

    def output_transform(self, config: Pi0Config, tokenizer: Any, embodiment: Embodiment, *,
                         decode: str) -> tuple[Transform | None, tuple[str, ...]]:
        """The step that turns the sampler's output into normalised actions ``[H, action_dim]`` (None: it already
        is), and the extra keys it adds that must reach the client (kept past the embodiment's outputs)."""
        ...

    # --------------------------------------------------------------------------------- tokenizer assets
    def sequence_tokenizer(self, config: Pi0Config, prompt: PaligemmaTokenizer, asset_dirs: Sequence[Path], *,
                           search: Path | None = None, data: TrainingData | None = None,
                           warn: Callable[[str], None] | None = None) -> Any:
        """The tokenizer the pipeline gets: ``prompt`` itself, or one built on it from this family's assets.

        The assets are looked for in each of ``asset_dirs`` (``assets/<asset_id>/`` folders), then, when
        ``search`` is given, anywhere under it if exactly one exists; else, given the training ``data``, they
        are fitted on it (``warn``-ed about); else a ``FamilyError`` says how to make them."""
        ...

    def tokenizer_files(self, tokenizer: Any, asset_id: str) -> dict[str, bytes]:
        """The tokenizer assets a checkpoint carries (paths under ``assets/``)."""
        ...

    # --------------------------------------------------------------------------------- serving
    def sampler(self, config: Pi0Config, options: SamplerOptions) -> SampleFn:
        """The model call ``Policy.from_model`` jits (the module is merged inside the jitted function)."""
        ...

    # --------------------------------------------------------------------------------- conversion
    #: LeRobot's policy ``type`` (``config.json``), or None when LeRobot has no such policy
    lerobot_type: str | None
    #: its parameter names there (None: no LeRobot counterpart)
    lerobot_layout: LeRobotLayout | None

    def lerobot_config(self, config: Pi0Config, **fields: Any) -> Any:
        """LeRobot's config object for ``config`` (``fields``: the shared keyword arguments)."""
        ...

    def lerobot_modeling(self) -> Any:
        """LeRobot's PyTorch modeling module (``pi0 convert --verify`` runs its model on the same inputs)."""
        ...

    def lerobot_model_class(self, module: Any) -> Any:
        """The model class in :meth:`lerobot_modeling`'s module."""
        ...

    def lerobot_sample_args(self, obs: Any) -> tuple[Any, ...]:
        """What LeRobot's ``sample_actions`` takes after images, image masks, tokens and the token mask."""
        ...


_REGISTRY: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    """Make ``family`` the one for ``model_type == family.name``; a second family under a taken name is an
    error unless ``replace``. Returns ``family`` (usable as a decorator on an instance factory's result)."""
    name = family.name
    if not name or not isinstance(name, str):
        raise FamilyError(f"a model family needs a name (its model_type), got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not family and not replace:
        raise FamilyError(f"model family {name!r} is already registered ({type(_REGISTRY[name]).__name__}); "
                          "pick another model_type")
    _REGISTRY[name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a registered family (tests)."""
    _REGISTRY.pop(name, None)


def family(name: str) -> ModelFamily:
    """The family registered under ``name`` (a ``model_type``)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("model type", name, _REGISTRY) from None


def registered(name: str) -> bool:
    return name in _REGISTRY


def family_names() -> tuple[str, ...]:
    """The registered model types, in registration order (built-ins first)."""
    return tuple(_REGISTRY)


def families() -> Iterator[ModelFamily]:
    return iter(tuple(_REGISTRY.values()))

