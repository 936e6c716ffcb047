"""pi0 and pi0.5 in Flax NNX.

Submodules import JAX; this package module does not, so ``import pi0cli.models`` stays cheap.

- ``config``: frozen model configs and named presets.
- ``gemma``, ``siglip``, ``lora``: the building blocks.
- ``pi0``: the ``Pi0`` model (pi0 and pi0.5), ``make_attn_mask``, ``posemb_sincos``.
- ``observation``: ``Observation`` container and preprocessing.
- ``params``: export/import in the reference (openpi) parameter naming.
- ``freeze``: freeze filters for fine-tuning.
"""
