"""The model-family seam: a new model type is one module plus one registration.

The toy family below (a linear map from the state to an action chunk) is defined and registered here, in the
test, and goes through ``pi0 train``'s library entry (``pi0cli.training.launch.train``) on a small dataset, then
``load_policy`` and a real ``PolicyServer`` on 127.0.0.1 answered by the client, with no core edits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pi0cli.models.config import Pi0Config
from pi0cli.models.families import (
    FamilyError,
    family,
    family_names,
    register_family,
    unregister_family,
)
from pi0cli.models.families.base import FamilyBase


class LinearChunk(nnx.Module):
    """Actions ``[B, H, A]`` = a linear function of the (normalised, padded) state: no images, no prompt."""

    def __init__(self, config: Pi0Config, rngs: nnx.Rngs):
        self.config = config
        a, h = config.action_dim, config.action_horizon
        self.proj = nnx.Linear(a, h * a, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def _chunk(self, obs) -> jax.Array:
        b = obs.state.shape[0]
        return self.proj(obs.state.astype(jnp.float32)).reshape(b, self.config.action_horizon, self.config.action_dim)

    def compute_loss(self, rng, obs, actions, *, train=False, noise=None, time=None, preprocessed=False):
        return jnp.mean(jnp.square(self._chunk(obs) - actions.astype(jnp.float32)), axis=(-2, -1))

    def sample_actions(self, rng, obs):
        return self._chunk(obs)


class LinearChunkFamily(FamilyBase):
    """A toy model type: everything but the model comes from ``FamilyBase``'s defaults."""

    name = "toy_linear_chunk"
    description = "toy: a linear map from the state to the action chunk"
    has_action_expert = False
    quantile_norm = False
    default_token_len = 16

    def build(self, config: Pi0Config, rngs: nnx.Rngs) -> LinearChunk:
        return LinearChunk(config, rngs)


@pytest.fixture
def toy_family():
    registered = register_family(LinearChunkFamily())
    yield registered
    unregister_family(registered.name)


def toy_config(**changes) -> Pi0Config:
    return Pi0Config(model_type=LinearChunkFamily.name, paligemma_variant="tiny", action_expert_variant="tiny_expert",
                     siglip_variant="tiny", dtype="float32", action_dim=16, action_horizon=4,
                     image_resolution=(32, 32), remat=False, **changes)


def test_model_type_accepts_registered_families_only(toy_family):
    config = toy_config()
    assert config.family is toy_family and config.token_len == 16 and config.suffix_len == 0
    assert LinearChunkFamily.name in family_names() and family("pi0_fast").name == "pi0_fast"
    with pytest.raises(FamilyError, match="already registered"):
        register_family(LinearChunkFamily())
    unregister_family(LinearChunkFamily.name)
    with pytest.raises(ValueError, match=f"model_type '{LinearChunkFamily.name}' is not supported.*pi0_fast"):
        toy_config()
    register_family(toy_family)


def test_builtin_families_own_what_differs():
    from pi0cli.models.config import FAST_IMAGE_KEYS, IMAGE_KEYS, preset

    pi0, pi05, fast = (preset(n) for n in ("pi0", "pi05", "pi0_fast"))
    assert (pi0.token_len, pi05.token_len, fast.token_len) == (48, 200, 250)
    assert pi0.image_keys == IMAGE_KEYS and fast.image_keys == FAST_IMAGE_KEYS
    assert (pi0.suffix_len, pi05.suffix_len, fast.suffix_len) == (51, 50, 0)
    assert not pi0.family.quantile_norm and pi05.family.quantile_norm and fast.family.quantile_norm
    assert fast.family.freeze_modes == ("full", "lora_vlm") and not fast.family.supports_rtc
    assert [f.lerobot_type for f in (pi0.family, pi05.family, fast.family)] == ["pi0", "pi05", "pi0_fast"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_a_toy_family_trains_and_serves_without_core_edits(toy_family, tmp_path, aloha_sim):
    from pi0cli.client.policy import WebsocketClientPolicy
    from pi0cli.data.stats import compute_norm_stats
    from pi0cli.data.synthetic import write_synthetic_dataset
    from pi0cli.normstats import save_norm_stats
    from pi0cli.policy import load_policy
    from pi0cli.serving.server import PolicyServer, ServerThread
    from pi0cli.training.config import ConstantSchedule, TrainConfig
    from pi0cli.training.launch import train

    model = toy_config()
    dataset = write_synthetic_dataset(tmp_path / "demos", aloha_sim, episodes=2, frames=(24, 16), seed=3,
                                      tasks=("Transfer cube",))
    stats_dir = tmp_path / "assets" / aloha_sim.asset_id
    save_norm_stats(compute_norm_stats(aloha_sim, dataset, horizon=model.action_horizon), stats_dir)
    steps = 40
    config = TrainConfig(name="toy_aloha_sim", embodiment=aloha_sim.name, model=model, dataset=str(dataset),
                         batch_size=4, num_train_steps=steps, lr_schedule=ConstantSchedule(lr=3e-2),
                         ema_decay=None, log_interval=10, save_interval=steps, keep_period=None, num_workers=0)

    # 1. Train through pi0 train's library entry: tokenizer, pipeline, loader, train step, checkpoint.
    result = train(config, aloha_sim, exp_dir=tmp_path / "exp", norm_stats=stats_dir)
    assert result.last_step == steps and result.losses[-1] < result.losses[0]
    step_dir = tmp_path / "exp" / str(steps)
    assert (step_dir / "params").is_dir()

    # 2. Load it as a policy (the checkpoint's config names the toy family) and serve it on 127.0.0.1.
    policy = load_policy(step_dir, embodiment=aloha_sim, batch_sizes=(1, 2))
    assert policy.rtc_shape is None  # the toy family's sampler takes no real-time chunking inputs
    obs = {"prompt": "Transfer cube", **aloha_sim.example_observation(0)}
    direct = policy.infer(obs)["actions"]
    assert direct.shape == (model.action_horizon, aloha_sim.action_dim) and np.isfinite(direct).all()
    server = PolicyServer(policy, embodiment=aloha_sim, port=0, max_batch=2)
    with ServerThread(server) as thread:
        client = WebsocketClientPolicy("127.0.0.1", thread.port)
        served = client.infer(obs)["actions"]
        client.close()
    np.testing.assert_allclose(served, direct, atol=1e-6)  # a deterministic model: the same chunk both ways

    # 3. The chunk is a function of the state (the toy model), and training moved it off zero.
    moved = policy.infer({**obs, "state": np.asarray(obs["state"], np.float32) + 0.1})["actions"]
    assert np.abs(moved - direct).max() > 0


def test_one_fast_tokenizer_loader_and_one_asset_folder(tmp_path):
    """The FAST tokenizer that ``pi0 norm-stats --fast-tokenizer`` writes (``asset_path``) is what training finds
    beside the norm stats, what the checkpoint carries (the same relative path) and what serving loads back: one
    folder name, one loader (the family's), for training and serving alike."""
    from test_fast_tokenizer import smooth_chunks, train_sentencepiece

    import pi0cli.policy.load as load
    import pi0cli.training.launch as launch
    from pi0cli.models.config import preset
    from pi0cli.models.fast_tokenizer import FastActionTokenizer, asset_path
    from pi0cli.models.tokenizer import PaligemmaTokenizer

    assert not hasattr(launch, "_fast_tokenizer") and not hasattr(load, "_fast_tokenizer")
    config = dataclasses.replace(preset("pi0_fast_tiny"), action_dim=7, action_horizon=10, max_token_len=64)
    fam = config.family
    prompt = PaligemmaTokenizer(config.token_len, train_sentencepiece())
    written = FastActionTokenizer.fit(list(smooth_chunks(200, horizon=10, dim=7)), vocab_size=300)
    written.save(asset_path(tmp_path / "assets", "aloha_sim"))  # where norm-stats writes it

    # Training: beside the norm stats of the asset id.
    trained = fam.sequence_tokenizer(config, prompt, [tmp_path / "assets" / "aloha_sim"])
    assert trained.fast.files() == written.files()
    # The checkpoint carries it at the same relative path ...
    files = fam.tokenizer_files(trained, "aloha_sim")
    assert files and all(name.startswith("aloha_sim/fast_tokenizer/") for name in files)
    checkpoint_assets = tmp_path / "checkpoint" / "assets"
    for name, data in files.items():
        (checkpoint_assets / name).parent.mkdir(parents=True, exist_ok=True)
        (checkpoint_assets / name).write_bytes(data)
    # ... and serving loads it back: under the asked asset id, or the only one the checkpoint has.
    for asset_id in ("aloha_sim", "another_robot"):
        served = fam.sequence_tokenizer(config, prompt, [checkpoint_assets / asset_id], search=checkpoint_assets)
        assert served.fast.files() == written.files()
    with pytest.raises(FamilyError, match="pi0 norm-stats --fast-tokenizer"):
        fam.sequence_tokenizer(config, prompt, [tmp_path / "nowhere"], search=tmp_path / "nowhere")
    # A family without tokenizer assets tokenizes with the prompt tokenizer itself.
    assert preset("pi0_tiny").family.sequence_tokenizer(preset("pi0_tiny"), prompt, []) is prompt


def test_a_robot_may_default_to_a_registered_family(toy_family):
    """The embodiment contract accepts any registered model family as its default, as Pi0Config does."""
    import dataclasses

    from pi0cli.plugins.manager import load_registry

    ur5 = load_registry({}).embodiment("ur5")
    assert dataclasses.replace(ur5, default_model=toy_family.name).default_model == toy_family.name
