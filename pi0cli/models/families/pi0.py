"""pi0: flow matching with an action expert; a continuous state token, mean/std normalisation, 48 prompt tokens.

The model is :class:`pi0cli.models.pi0.Pi0` (shared with pi0.5, :mod:`pi0cli.models.families.pi05`), sampled
with ``num_steps`` Euler steps and real-time chunking (the policy hands it the inputs); LeRobot's ``pi0``
policy holds the same weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pi0cli.models.families import LeRobotLayout, SampleFn, SamplerOptions
from pi0cli.models.families.base import FamilyBase

if TYPE_CHECKING:
    import jax
    from flax import nnx

    from pi0cli.models.config import Pi0Config
    from pi0cli.models.pi0 import Pi0
    from pi0cli.models.rtc import RTCInputs


class Pi0Family(FamilyBase):
    name = "pi0"
    description = "pi0: flow matching with a 300M action expert (Euler steps, real-time chunking)"
    default_token_len = 48
    quantile_norm = False  # the reference rule: mean/std for pi0, quantiles for everything else
    supports_rtc = True
    supports_action_mask = True
    lerobot_type: str | None = "pi0"
    lerobot_layout: LeRobotLayout | None = LeRobotLayout(
        projections=("action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in", "action_time_mlp_out"),
        expert_norm="scale")
    #: the action expert's norms are adaptive (adaRMS, time-conditioned) and it has no state token
    adaptive_expert = False

    def suffix_len(self, config: Pi0Config) -> int:
        return config.action_horizon + (0 if self.adaptive_expert else 1)  # actions (+ the state token)

    def build(self, config: Pi0Config, rngs: nnx.Rngs) -> Pi0:
        from pi0cli.models.pi0 import Pi0

        return Pi0(config, rngs)

    def sampler(self, config: Pi0Config, options: SamplerOptions) -> SampleFn:
        """Euler steps; every batch carries real-time chunking inputs (a plain row has no overlap), so one
        program serves both kinds of request."""
        from pi0cli.models.observation import Observation

        num_steps = options.num_steps
        guidance = ({} if options.rtc_max_guidance is None
                    else {"max_guidance_weight": float(options.rtc_max_guidance)})

        def sample(module: Any, rng: jax.Array, batch: Mapping[str, Any], rtc: RTCInputs | None) -> jax.Array:
            actions: jax.Array = module.sample_actions(rng, Observation.from_dict(batch), num_steps=num_steps,
                                                       rtc=rtc, **guidance)
            return actions

        return sample

    # ------------------------------------------------------------------------------------------ LeRobot
    def lerobot_config(self, config: Pi0Config, **fields: Any) -> Any:
        from lerobot.policies.pi0.configuration_pi0 import PI0Config

        return PI0Config(**fields)

    def lerobot_modeling(self) -> Any:
        """LeRobot's modeling module for this family (``--verify`` runs it)."""
        from lerobot.policies.pi0 import modeling_pi0

        return modeling_pi0

    def lerobot_model_class(self, module: Any) -> Any:
        return module.PI0Pytorch

    def lerobot_sample_args(self, obs: Any) -> tuple[Any, ...]:
        """What LeRobot's ``sample_actions`` takes after images, masks, tokens and token mask: the state."""
        import numpy as np
        import torch

        return (torch.from_numpy(np.asarray(obs.state)),)



PI0 = Pi0Family()
