"""pi0, pi0.5 and pi0-FAST in Flax NNX.

Submodules import JAX; this package module does not, so ``import pi0cli.models`` stays cheap.

- ``config``: frozen model configs and named presets.
- ``gemma``, ``siglip``, ``lora``: the building blocks.
- ``pi0``: the ``Pi0`` model (pi0 and pi0.5), ``make_attn_mask``, ``posemb_sincos``.
- ``pi0_fast``: the autoregressive ``Pi0FAST`` (``model_type="pi0_fast"``).
- ``fast_tokenizer``: the FAST action tokenizer (DCT + BPE; fit, save, load); ``tokenizer``: prompt formats.
- ``observation``: ``Observation`` container and preprocessing.
- ``params``: export/import in the reference (openpi) parameter naming.
- ``freeze``: freeze filters for fine-tuning.
"""
