"""pi0-FAST decoding rules through a loaded policy (a random-weight tiny checkpoint with a FAST tokenizer):
constrained decoding always answers a chunk, replies and /metrics name the rule, real-time chunking is refused
with what works instead."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

HORIZON = 10


@pytest.fixture(scope="module")
def fast_checkpoint(tmp_path_factory, aloha_sim):
    from pi0cli.models.fast_tokenizer import ASSET_DIR, FastActionTokenizer
    from pi0cli.testing import make_tiny_checkpoint, tiny_model_config

    config = tiny_model_config(aloha_sim, "pi0_fast_tiny", max_token_len=192)
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("fast") / "tiny_fast", aloha_sim, model_config=config)
    chunks = np.clip(np.random.default_rng(0).normal(0, 0.4, (150, HORIZON, aloha_sim.action_dim)), -1, 1)
    FastActionTokenizer.fit(list(chunks), vocab_size=400).save(path / "assets" / aloha_sim.asset_id / ASSET_DIR)
    return path


def test_constrained_decoding_always_answers_a_chunk(fast_checkpoint, aloha_sim):
    from pi0cli.policy.load import load_policy

    obs = {"prompt": "transfer cube", **aloha_sim.example_observation(0)}
    for rule in ("strict", "constrained"):
        policy = load_policy(fast_checkpoint, embodiment=aloha_sim, fast_decode=rule, max_decoding_steps=200)
        reply = policy.infer(obs)
        assert reply["fast_decode"] == rule and reply["actions"].shape == (HORIZON, aloha_sim.action_dim)
        if rule == "constrained":  # random weights: strict decoding is expected to fail here, constrained never
            assert reply["decode_failures"] == 0 and np.isfinite(reply["actions"]).all()
            assert reply["action_tokens"] <= 200


def test_constrained_decoding_refuses_a_budget_too_small_for_a_chunk(fast_checkpoint, aloha_sim):
    from pi0cli.models.tokenizer import TokenizerError
    from pi0cli.policy.load import load_policy

    with pytest.raises(TokenizerError, match="raise --max-decoding-steps to"):
        load_policy(fast_checkpoint, embodiment=aloha_sim, fast_decode="constrained", max_decoding_steps=5)


def test_the_default_rule_is_constrained_and_never_fails(fast_checkpoint, aloha_sim):
    from pi0cli.policy.load import load_policy

    policy = load_policy(fast_checkpoint, embodiment=aloha_sim, max_decoding_steps=200)
    for seed in range(3):
        reply = policy.infer({"prompt": "transfer cube", **aloha_sim.example_observation(seed)})
        assert reply["fast_decode"] == "constrained" and int(reply["decode_failures"]) == 0


def test_real_time_chunking_request_is_refused_naming_what_works(fast_checkpoint, aloha_sim):
    from pi0cli.policy.load import load_policy
    from pi0cli.policy.rtc import RTCRequestError

    policy = load_policy(fast_checkpoint, embodiment=aloha_sim)
    obs = {"prompt": "transfer cube", **aloha_sim.example_observation(0),
           "prev_actions": np.zeros((5, aloha_sim.action_dim), np.float32)}
    with pytest.raises(RTCRequestError, match="execute chunks with naive or ensemble"):
        policy.infer(obs)


def test_eval_with_rtc_execution_is_refused_before_any_episode(fast_checkpoint, pi0_exe, tmp_path):
    done = subprocess.run([pi0_exe, "eval", "aloha_sim", "--checkpoint", str(fast_checkpoint), "--execution", "rtc",
                           "--episodes", "1", "--out", str(tmp_path / "eval")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "use --execution naive or ensemble" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "eval" / "report.json").exists()


def test_metrics_count_action_decode_failures_per_rule():
    from pi0cli.serving.metrics import ServerMetrics

    metrics = ServerMetrics(open_connections=lambda: 0, active_connections=lambda: 0, ready=lambda: 1)
    metrics.action_decode("lenient", 1)
    metrics.action_decode("lenient", 1)
    metrics.action_decode("strict", 0)
    text = metrics.render().decode()
    for rule, count in (("strict", 0), ("lenient", 2), ("constrained", 0)):
        assert f'pi0_action_decode_failures_total{{rule="{rule}"}} {count:.1f}' in text, text


def test_bench_fast_vs_pi0_heldout_measures_on_a_tiny_checkpoint(fast_checkpoint, aloha_sim, tmp_path):
    """Smoke test of the benchmark's held-out measures (teacher-forced accuracy, MAE per decoding rule)."""
    import sys
    from pathlib import Path

    from pi0cli.data.synthetic import write_synthetic_dataset

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_fast_vs_pi0 as bench

    dataset = write_synthetic_dataset(tmp_path / "heldout", aloha_sim, episodes=1, frames=16, seed=5,
                                      tasks=("transfer cube",))
    forced = bench.teacher_forced(fast_checkpoint, str(dataset), stride=8)
    assert forced["chunks"] == 2 and 0 <= forced["token_accuracy"] <= 1 and forced["tokens_per_chunk"] > 2
    assert forced["exact_chunk_rate"] in (0.0, 0.5, 1.0)
    mae = bench.heldout_mae(fast_checkpoint, str(dataset), "constrained", stride=8)
    assert mae["decode_failures"] == 0 and mae["frames"] == 2 and np.isfinite(mae["mae"])
    # The same measures without the state (this checkpoint never trained so: it warns, and still measures).
    with pytest.warns(UserWarning, match="state_dropout 0"):
        blind = bench.teacher_forced(fast_checkpoint, str(dataset), stride=8, state_input="hidden")
    assert blind["state_input"] == "hidden" and blind["chunks"] == 2
    with pytest.warns(UserWarning, match="state_dropout 0"):
        blind_mae = bench.heldout_mae(fast_checkpoint, str(dataset), "constrained", stride=8, state_input="hidden")
    assert blind_mae["state_input"] == "hidden" and blind_mae["decode_failures"] == 0
