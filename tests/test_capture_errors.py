"""Bad inputs to capture and analysis fail early with errors that name the value and the fix."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest
import torch
import torch.nn as nn

from interlatent_mcp.analysis import AnalysisParams, compute_stats
from interlatent_mcp.capture import (
    StepMetric,
    TorchPolicy,
    describe_layers,
    load_policy,
    make_env,
    record_rollout,
)
from interlatent_mcp.capture.rollout import MAX_CHUNK_STEPS
from interlatent_mcp.errors import (
    InterlatentError,
    InvalidArgumentError,
    SpaceMismatchError,
    UnknownEnvironmentError,
    UnknownLayerError,
    UnknownPolicyError,
    UnknownRunError,
)
from interlatent_mcp.store import Store


def test_unknown_environment_suggests_close_match(store: Store) -> None:
    with pytest.raises(UnknownEnvironmentError) as caught:
        record_rollout(store, "cartpole-ppo", "CartPole-v9", steps=10)
    message = str(caught.value)
    assert "'CartPole-v9'" in message
    assert "did you mean" in message
    assert "'CartPole-v1'" in message
    assert "interlatent envs" in message
    assert store.count_runs() == 0


def test_unknown_environment_without_match() -> None:
    with pytest.raises(UnknownEnvironmentError) as caught:
        make_env("Zzyzx-v0")
    assert "'Zzyzx-v0' is not registered" in str(caught.value)
    assert "did you mean" not in str(caught.value)


def test_unknown_layer_lists_valid_names(store: Store, cartpole_policy) -> None:
    with pytest.raises(UnknownLayerError) as caught:
        record_rollout(store, cartpole_policy, steps=10, layers=["act1:post", "fc3:post"])
    message = str(caught.value)
    assert "'fc3:post'" in message
    for name in describe_layers(cartpole_policy):
        assert name in message
    assert store.count_runs() == 0


def test_unknown_layer_suggests_close_match(store: Store) -> None:
    with pytest.raises(UnknownLayerError) as caught:
        record_rollout(store, "cartpole-ppo", steps=10, layers=["fc11:post"])
    assert "did you mean 'fc1:post'" in str(caught.value)


@pytest.mark.parametrize("layer", ["fc1:mid", "fc1:Post", "act1:pre:post"])
def test_bad_point_suffix(store: Store, layer: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        record_rollout(store, "cartpole-ppo", steps=10, layers=[layer])
    message = str(caught.value)
    assert repr(layer) in message
    assert "':pre'" in message
    assert "':post'" in message


@pytest.mark.parametrize("layer", ["", "   "])
def test_empty_layer_name(store: Store, layer: str) -> None:
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        record_rollout(store, "cartpole-ppo", steps=10, layers=[layer])


@pytest.mark.parametrize("env_id, env_action_space", [
    ("Pendulum-v1", "Box(-2.0, 2.0, (1,), float32)"),
    ("MountainCar-v0", "Discrete(3)"),
])
def test_mismatched_action_space(store: Store, env_id: str, env_action_space: str) -> None:
    with pytest.raises(SpaceMismatchError) as caught:
        record_rollout(store, "cartpole-ppo", env_id, steps=10)
    message = str(caught.value)
    assert "action space Discrete(2)" in message
    assert env_action_space in message
    assert env_id in message
    assert store.count_runs() == 0


def test_mismatched_observation_space(store: Store) -> None:
    env = gym.make("CartPole-v1")
    module = nn.Linear(6, 2)
    policy = TorchPolicy(module, observation_space=gym.spaces.Box(-1, 1, (6,)),
                         action_space=env.action_space, name="six-inputs")
    env.close()
    with pytest.raises(SpaceMismatchError) as caught:
        record_rollout(store, policy, "CartPole-v1", steps=10)
    message = str(caught.value)
    assert "observation space" in message
    assert "(6,)" in message
    assert "(4,)" in message


def test_missing_policy_file(store: Store, tmp_path: Path) -> None:
    missing = tmp_path / "models" / "ppo_cartpole.zip"
    with pytest.raises(UnknownPolicyError) as caught:
        load_policy(missing)
    assert str(missing) in str(caught.value)
    assert "does not exist" in str(caught.value)
    with pytest.raises(UnknownPolicyError):
        record_rollout(store, str(missing), "CartPole-v1", steps=10)


def test_file_that_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "notes.zip"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(UnknownPolicyError) as caught:
        load_policy(path)
    assert "is not a Stable-Baselines3 model" in str(caught.value)


def test_unknown_builtin_policy_suggests_close_match() -> None:
    with pytest.raises(UnknownPolicyError) as caught:
        load_policy("cartpole-pp")
    message = str(caught.value)
    assert "'cartpole-pp'" in message
    assert "did you mean 'cartpole-ppo'" in message


@pytest.mark.parametrize("budget, expected", [
    ({"episodes": 0}, "episodes must be at least 1, got 0"),
    ({"episodes": -3}, "episodes must be at least 1, got -3"),
    ({"steps": 0}, "steps must be at least 1, got 0"),
    ({}, "give the number of episodes or of steps"),
])
def test_bad_budget(store: Store, budget: dict[str, int], expected: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        record_rollout(store, "cartpole-ppo", **budget)
    assert expected in str(caught.value)
    assert store.count_runs() == 0


@pytest.mark.parametrize("chunk_steps", [0, -1, MAX_CHUNK_STEPS + 1])
def test_chunk_steps_out_of_range(store: Store, chunk_steps: int) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        record_rollout(store, "cartpole-ppo", steps=10, chunk_steps=chunk_steps)
    message = str(caught.value)
    assert f"between 1 and {MAX_CHUNK_STEPS}" in message
    assert f"got {chunk_steps}" in message


@pytest.mark.parametrize("name, expected", [
    ("reward", "already used"),
    ("pole_angle", "already used"),
    ("2fast", "must be a Python identifier"),
])
def test_bad_metric_name(store: Store, name: str, expected: str) -> None:
    metric = StepMetric(name, lambda obs, reward, info: 0.0)
    with pytest.raises(InvalidArgumentError) as caught:
        record_rollout(store, "cartpole-ppo", steps=10, metrics=[metric])
    assert repr(name) in str(caught.value)
    assert expected in str(caught.value)


def test_bad_env_kwargs(store: Store) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        record_rollout(store, "cartpole-ppo", steps=10, env_kwargs={"gravity_scale": 2})
    assert "CartPole-v1" in str(caught.value)


def test_policy_without_environment(store: Store) -> None:
    env = gym.make("CartPole-v1")
    policy = TorchPolicy(nn.Linear(4, 2), observation_space=env.observation_space,
                         action_space=env.action_space, name="bare")
    env.close()
    with pytest.raises(InvalidArgumentError, match="no default environment; give env_id"):
        record_rollout(store, policy, steps=10)


def test_torch_policy_rejects_unsupported_action_space() -> None:
    space = gym.spaces.MultiBinary(3)
    with pytest.raises(SpaceMismatchError, match="MultiBinary"):
        TorchPolicy(nn.Linear(4, 3), observation_space=gym.spaces.Box(-1, 1, (4,)),
                    action_space=space)


def test_layer_that_fires_twice_per_step(store: Store) -> None:
    """A module reused within one forward pass has no single value per step."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.shared(torch.relu(self.shared(x))))

    env = gym.make("CartPole-v1")
    policy = TorchPolicy(Twice(), observation_space=env.observation_space,
                         action_space=env.action_space, name="twice")
    env.close()
    with pytest.raises(InvalidArgumentError) as caught:
        record_rollout(store, policy, "CartPole-v1", steps=10, layers=["shared:post"])
    assert "shared:post" in str(caught.value)
    assert "once per step" in str(caught.value)
    (run,) = store.list_runs()
    assert run.status == "interrupted"


def test_stats_over_different_policies(store: Store) -> None:
    env = gym.make("CartPole-v1")
    torch.manual_seed(0)
    other = TorchPolicy(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
                        observation_space=env.observation_space, action_space=env.action_space,
                        name="random-mlp", env_id="CartPole-v1")
    env.close()
    first = record_rollout(store, "cartpole-ppo", steps=50)
    second = record_rollout(store, other, steps=50)
    with pytest.raises(InvalidArgumentError) as caught:
        compute_stats(store, [first.run_id, second.run_id])
    message = str(caught.value)
    assert "different policies" in message
    assert str([first.policy_id, second.policy_id]) in message
    assert store.list_analyses() == []


def test_stats_unknown_run(store: Store) -> None:
    record_rollout(store, "cartpole-ppo", steps=20)
    with pytest.raises(UnknownRunError) as caught:
        compute_stats(store, [1, 999])
    assert "run 999 is not in the store" in str(caught.value)
    assert "interlatent runs" in str(caught.value)


def test_stats_without_runs(store: Store) -> None:
    with pytest.raises(InvalidArgumentError, match="at least one run"):
        compute_stats(store, [])


class InterruptedAtOnce(TorchPolicy):
    """The shipped CartPole policy (same weights and source) that is interrupted before acting."""

    def __init__(self) -> None:
        base = load_policy("cartpole-ppo")
        super().__init__(base.module, observation_space=base.observation_space,
                         action_space=base.action_space, name=base.name, source=base.source,
                         env_id=base.env_id)

    def act(self, obs: object) -> int:
        raise KeyboardInterrupt


def interrupted_before_first_step(store: Store) -> int:
    with pytest.raises(KeyboardInterrupt):
        record_rollout(store, InterruptedAtOnce(), steps=10, layers=["act1:pre"])
    (run,) = store.list_runs()
    assert run.n_steps == 0
    return run.run_id


def test_stats_over_empty_run(store: Store) -> None:
    run_id = interrupted_before_first_step(store)
    with pytest.raises(InvalidArgumentError) as caught:
        compute_stats(store, [run_id])
    assert f"runs [{run_id}] have no recorded steps" in str(caught.value)


def test_stats_empty_run_beside_full_one(store: Store) -> None:
    empty = interrupted_before_first_step(store)
    full = record_rollout(store, "cartpole-ppo", steps=40, layers=["act1:pre"])
    analysis = compute_stats(store, [empty, full.run_id], ["act1:pre"])
    assert analysis.n_steps == 40
    layer_id = store.run_layer_ids(full.run_id)["act1:pre"]
    assert {s.count for s in store.get_channel_stats(analysis.analysis_id, layer_id)} == {40}


def test_stats_layer_not_recorded(store: Store) -> None:
    run = record_rollout(store, "cartpole-ppo", steps=20, layers=["act1:post"])
    with pytest.raises(UnknownLayerError) as caught:
        compute_stats(store, [run.run_id], ["fc2:post"])
    assert "'fc2:post'" in str(caught.value)
    assert "recorded layers: act1:post" in str(caught.value)


@pytest.mark.parametrize("arguments, expected", [
    ({"top_k": 0}, "top_k must be between 1 and"),
    ({"hist_bins": 1}, "hist_bins must be between 2 and 1024"),
    ({"quantiles": (0.5, 1.5)}, "quantiles must lie in [0, 1]"),
    ({"active_threshold": float("nan")}, "active_threshold must be finite"),
])
def test_bad_analysis_params(arguments: dict, expected: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        AnalysisParams(**arguments)
    assert expected in str(caught.value)


def test_errors_share_base_class() -> None:
    for error in (InvalidArgumentError, SpaceMismatchError, UnknownEnvironmentError,
                  UnknownLayerError, UnknownPolicyError, UnknownRunError):
        assert issubclass(error, InterlatentError)
