"""pi0, pi0.5 and pi0-FAST in Flax NNX.

Submodules import JAX; this package module does not, so ``import pi0cli.models`` stays cheap.

- ``config``: frozen model configs and named presets.
- ``gemma``, ``siglip``, ``lora``: the building blocks.
- ``pi0``: the ``Pi0`` model (pi0 and pi0.5), ``make_attn_mask``, ``posemb_sincos``.
- ``rtc``: real-time chunking for ``Pi0.sample_actions`` (``RTCInputs``, the soft mask, the guidance weight).
- ``pi0_fast``: the autoregressive ``Pi0FAST`` (``model_type="pi0_fast"``).
- ``fast_tokenizer``: the FAST action tokenizer (DCT + BPE; fit, save, load); ``tokenizer``: prompt formats.
- ``observation``: ``Observation`` container and preprocessing.
- ``params``: export/import in the reference (openpi) parameter naming.
- ``freeze``: freeze filters for fine-tuning.

:func:`create_model` builds the model class a config's ``model_type`` calls for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flax import nnx

    from pi0cli.models.config import Pi0Config
    from pi0cli.models.pi0 import Pi0
    from pi0cli.models.pi0_fast import Pi0FAST


def create_model(config: Pi0Config, rngs: nnx.Rngs) -> Pi0 | Pi0FAST:
    """``Pi0FAST`` for ``model_type="pi0_fast"``, else ``Pi0`` (pi0 and pi0.5)."""
    if config.fast:
        from pi0cli.models.pi0_fast import Pi0FAST

        return Pi0FAST(config, rngs)
    from pi0cli.models.pi0 import Pi0

    return Pi0(config, rngs)
