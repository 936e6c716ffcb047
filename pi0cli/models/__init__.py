"""pi0, pi0.5 and pi0-FAST in Flax NNX.

Submodules import JAX; this package module does not, so ``import pi0cli.models`` stays cheap.

- ``config``: frozen model configs and named presets.
- ``families``: one object per ``model_type`` owning what differs between kinds of model (the registry; the
  built-in families ``pi0``, ``pi05`` and ``pi0_fast`` are registered here, before any submodule runs).
- ``gemma``, ``siglip``, ``lora``: the building blocks.
- ``pi0``: the ``Pi0`` model (pi0 and pi0.5), ``make_attn_mask``, ``posemb_sincos``.
- ``rtc``: real-time chunking for ``Pi0.sample_actions`` (``RTCInputs``, the soft mask, the guidance weight).
- ``pi0_fast``: the autoregressive ``Pi0FAST`` (``model_type="pi0_fast"``).
- ``fast_tokenizer``: the FAST action tokenizer (DCT + BPE; fit, save, load); ``tokenizer``: prompt formats.
- ``observation``: ``Observation`` container and preprocessing.
- ``params``: export/import in the reference (openpi) parameter naming.
- ``freeze``: freeze filters for fine-tuning.

:func:`create_model` builds the model a config's ``model_type`` calls for (its family's ``build``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# The built-in model families. Python runs this package module before any ``pi0cli.models.*`` module, so the
# registry (``pi0cli.models.families``) holds them before ``Pi0Config`` validates its first ``model_type``; the
# family modules import nothing heavy (not even the config) until a method runs.
from pi0cli.models.families import register_family
from pi0cli.models.families.pi0 import PI0
from pi0cli.models.families.pi0_fast import PI0_FAST
from pi0cli.models.families.pi05 import PI05

for _family in (PI0, PI05, PI0_FAST):
    register_family(_family)

if TYPE_CHECKING:
    from flax import nnx

    from pi0cli.models.config import Pi0Config
    from pi0cli.models.families import PolicyModel


def create_model(config: Pi0Config, rngs: nnx.Rngs) -> PolicyModel:
    """The model of ``config.model_type``'s family (``Pi0`` for pi0 and pi0.5, ``Pi0FAST`` for pi0-FAST)."""
    return config.family.build(config, rngs)
