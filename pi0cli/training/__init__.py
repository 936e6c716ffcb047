"""Fine-tuning pi0 models: configs and presets, optimiser, checkpoints, sharding and the training loop.

Only ``config`` is cheap to import (no JAX); the other modules import JAX.
"""
