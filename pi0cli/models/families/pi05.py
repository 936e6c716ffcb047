"""pi0.5: pi0 with adaRMS time conditioning of the action expert and no continuous state token (the state
goes into the prompt as text: 200 prompt tokens, quantile normalisation).

Same model class as pi0 (:class:`pi0cli.models.pi0.Pi0` reads ``config.pi05``) and LeRobot's ``pi05`` policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pi0cli.models.families import LeRobotLayout
from pi0cli.models.families.pi0 import Pi0Family

if TYPE_CHECKING:
    from pi0cli.models.config import Pi0Config


class Pi05Family(Pi0Family):
    name = "pi05"
    description = "pi0.5: pi0 with adaRMS time conditioning and the state in the prompt"
    default_token_len = 200
    discrete_state = True
    quantile_norm = True
    lerobot_type: str | None = "pi05"
    lerobot_layout: LeRobotLayout | None = LeRobotLayout(
        projections=("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out"), expert_norm="adaptive")
    adaptive_expert = True

    def lora_grad_accum_steps(self, config: Pi0Config, batch_size: int) -> int:
        """pi0.5's 200-token prompts take a whole-batch LoRA step of the full-size model past 24 GiB: two (exact)
        micro-batches when the batch splits evenly."""
        return 2 if batch_size % 2 == 0 else 1

    def lerobot_config(self, config: Pi0Config, **fields: Any) -> Any:
        from lerobot.policies.pi05.configuration_pi05 import PI05Config

        return PI05Config(**fields)

    def lerobot_modeling(self) -> Any:
        from lerobot.policies.pi05 import modeling_pi05

        return modeling_pi05

    def lerobot_model_class(self, module: Any) -> Any:
        return module.PI05Pytorch

    def lerobot_sample_args(self, obs: Any) -> tuple[Any, ...]:
        return ()  # the state is in the prompt


PI05 = Pi05Family()
