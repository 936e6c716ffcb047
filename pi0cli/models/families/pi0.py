"""pi0: flow matching with an action expert; a continuous state token, mean/std normalisation, 48 prompt tokens.

The model is :class:`pi0cli.models.pi0.Pi0` (shared with pi0.5, :mod:`pi0cli.models.families.pi05`), sampled
with ``num_steps`` Euler steps and real-time chunking; LeRobot's ``pi0`` policy holds the same weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pi0cli.models.families import SampleFn, SamplerOptions
from pi0cli.models.families.base import FamilyBase

if TYPE_CHECKING:
    import jax
    from flax import nnx

    from pi0cli.models.config import Pi0Config
    from pi0cli.models.pi0 import Pi0


class Pi0Family(FamilyBase):
    name = "pi0"
    description = "pi0: flow matching with a 300M action expert (Euler steps, real-time chunking)"
    default_token_len = 48
    quantile_norm = False  # the reference rule: mean/std for pi0, quantiles for everything else
    supports_rtc = True
    lerobot_type: str | None = "pi0"
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
        from pi0cli.models.rtc import RTCInputs
        from pi0cli.policy.rtc import MODEL_KEYS as RTC_KEYS

        num_steps = options.num_steps
        guidance = ({} if options.rtc_max_guidance is None
                    else {"max_guidance_weight": float(options.rtc_max_guidance)})

        def sample(module: Any, rng: jax.Array, batch: Mapping[str, Any]) -> jax.Array:
            rtc = RTCInputs(*(batch[k] for k in RTC_KEYS))
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

    def lerobot_rules(self, config: Pi0Config) -> tuple[list[Any], list[tuple[list[Any], int]]]:
        from pi0cli.convert import lerobot_names as n

        flat = n.paligemma_rules(config)
        flat += n.linear_rule("action_in_proj", "action_in_proj") + n.linear_rule("action_out_proj", "action_out_proj")
        if self.adaptive_expert:
            flat += n.linear_rule(f"{n.LLM}/final_norm_1/Dense_0", f"{n.EXPERT}.norm.dense")
            flat += n.linear_rule("time_mlp_in", "time_mlp_in") + n.linear_rule("time_mlp_out", "time_mlp_out")
        else:
            flat.append(n.same_rule(f"{n.LLM}/final_norm_1/scale", f"{n.EXPERT}.norm.weight"))
            for name in ("state_proj", "action_time_mlp_in", "action_time_mlp_out"):
                flat += n.linear_rule(name, name)
        vlm, img = config.vlm, config.siglip
        layered = [
            (n.gemma_layer_rules(vlm, "", f"{n.VLM}.layers.{{i}}", False)
             + n.gemma_layer_rules(config.expert, "_1", f"{n.EXPERT}.layers.{{i}}", self.adaptive_expert), vlm.depth),
            (n.siglip_layer_rules(img, f"{n.VISION}.encoder.layers.{{i}}"), img.depth),
        ]
        return flat, layered

    def lerobot_extra_weights(self, flat_params: Mapping[str, Any], config: Pi0Config) -> dict[str, Any]:
        """The action expert's ``lm_head``: unused, no reference counterpart, but LeRobot's strict loader wants
        it (its vocabulary is fixed); zeros."""
        from pi0cli.convert import lerobot_names as n

        return n.expert_lm_head(flat_params, config)


PI0 = Pi0Family()
