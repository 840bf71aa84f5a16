"""Stable-Baselines3 models saved to .zip, loaded, described and recorded like any policy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import layer_activations, recorded_observations
from interlatent_mcp.capture import SB3Policy, describe_layers, load_policy, load_sb3, record_rollout
from interlatent_mcp.capture.policies import _SB3_ALGORITHMS
from interlatent_mcp.errors import SpaceMismatchError, UnknownPolicyError
from interlatent_mcp.store import Store

sb3 = pytest.importorskip("stable_baselines3")

CARTPOLE = ("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity")
PENDULUM = ("cos_theta", "sin_theta", "angular_velocity")


def actor_critic_net(policy: Any, obs: torch.Tensor) -> torch.Tensor:
    return policy.mlp_extractor.policy_net[0](obs)


def actor_critic_logits(policy: Any, obs: torch.Tensor) -> torch.Tensor:
    return policy.action_net(policy.mlp_extractor.policy_net(obs))


def actor_critic_value(policy: Any, obs: torch.Tensor) -> torch.Tensor:
    return policy.value_net(policy.mlp_extractor.value_net(obs))


def q_values(policy: Any, obs: torch.Tensor) -> torch.Tensor:
    return policy.q_net.q_net(obs)


def sac_mean(policy: Any, obs: torch.Tensor) -> torch.Tensor:
    return policy.actor.mu(policy.actor.latent_pi(obs))


@dataclass(frozen=True)
class Case:
    """One algorithm: how to train it briefly, its layers, and their values computed by hand."""

    algorithm: str
    env_id: str
    observation_names: tuple[str, ...]
    train_steps: int
    options: dict[str, Any]
    widths: dict[str, int]
    """Hook points the policy must list, with their widths."""
    direct: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]]
    """Recorded layers and the modules that compute them from a batch of observations."""


CASES = [
    Case("PPO", "CartPole-v1", CARTPOLE, 128, {"n_steps": 64, "batch_size": 64, "n_epochs": 1},
         {"mlp_extractor.policy_net.0:post": 64, "action_net:post": 2, "value_net:post": 1},
         {"mlp_extractor.policy_net.0:post": actor_critic_net, "action_net:post": actor_critic_logits,
          "value_net:post": actor_critic_value}),
    Case("A2C", "CartPole-v1", CARTPOLE, 64, {"n_steps": 8},
         {"mlp_extractor.policy_net.0:post": 64, "action_net:post": 2, "value_net:post": 1},
         {"mlp_extractor.policy_net.0:post": actor_critic_net, "action_net:post": actor_critic_logits}),
    Case("DQN", "CartPole-v1", CARTPOLE, 200,
         {"learning_starts": 50, "buffer_size": 1000, "train_freq": 4},
         {"q_net.q_net.0:post": 64, "q_net.q_net:post": 2},
         {"q_net.q_net:post": q_values}),
    Case("SAC", "Pendulum-v1", PENDULUM, 120,
         {"learning_starts": 50, "buffer_size": 1000, "batch_size": 32,
          "policy_kwargs": {"net_arch": [32, 32]}},
         {"actor.latent_pi.0:post": 32, "actor.mu:post": 1},
         {"actor.mu:post": sac_mean}),
]


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train each algorithm for a few hundred steps (quality does not matter) and save it."""
    folder = tmp_path_factory.mktemp("sb3")
    paths = {}
    for case in CASES:
        model = getattr(sb3, case.algorithm)("MlpPolicy", case.env_id, seed=0, device="cpu",
                                             **case.options)
        model.learn(case.train_steps)
        paths[case.algorithm] = folder / f"{case.algorithm.lower()}_tiny.zip"
        model.save(paths[case.algorithm])
    return paths


@pytest.mark.parametrize("case", CASES, ids=[case.algorithm for case in CASES])
def test_load_and_describe(saved_models: dict[str, Path], case: Case) -> None:
    policy = load_policy(saved_models[case.algorithm])
    assert isinstance(policy, SB3Policy)
    assert policy.kind == f"sb3-{case.algorithm.lower()}"
    assert policy.name == f"{case.algorithm.lower()}_tiny"
    widths = describe_layers(policy)
    for name, width in case.widths.items():
        assert widths.get(name) == width, name
    # Every module that ran in the probe is listed with both of its points.
    assert all(name.rpartition(":")[2] in ("pre", "post") for name in widths)


@pytest.mark.parametrize("case", CASES, ids=[case.algorithm for case in CASES])
def test_recorded_layer_equals_forward_pass(store: Store, saved_models: dict[str, Path],
                                            case: Case) -> None:
    policy = load_policy(saved_models[case.algorithm])
    run = record_rollout(store, policy, case.env_id, steps=150, layers=list(case.direct),
                         chunk_steps=64)
    assert run.status == "complete"
    assert run.n_steps == 150
    observations = torch.from_numpy(recorded_observations(store, run, case.observation_names))
    with torch.inference_mode():
        for layer, compute in case.direct.items():
            expected = compute(policy.module, observations).numpy()
            np.testing.assert_allclose(layer_activations(store, run, layer), expected,
                                       rtol=1e-5, atol=1e-5, err_msg=layer)


@pytest.mark.parametrize("algorithm, layer", [("PPO", "action_net:post"), ("DQN", "q_net.q_net:post")])
def test_discrete_action_is_greedy(store: Store, saved_models: dict[str, Path], algorithm: str,
                                   layer: str) -> None:
    run = record_rollout(store, str(saved_models[algorithm]), "CartPole-v1", steps=100,
                         layers=[layer])
    actions = store.read_step_range(run.run_id).variables[:, run.variables.index("action")]
    np.testing.assert_array_equal(actions, layer_activations(store, run, layer).argmax(axis=1))


def test_sac_actions_within_box_bounds(store: Store, saved_models: dict[str, Path]) -> None:
    policy = load_policy(saved_models["SAC"])
    run = record_rollout(store, policy, "Pendulum-v1", steps=200, layers=["actor.mu:post"])
    actions = store.read_step_range(run.run_id).variables[:, run.variables.index("action")]
    low, high = policy.action_space.low[0], policy.action_space.high[0]
    assert (low, high) == (-2.0, 2.0)
    assert actions.min() >= low
    assert actions.max() <= high
    # The deterministic SAC action is the squashed mean, rescaled from [-1, 1] to the bounds.
    mean = layer_activations(store, run, "actor.mu:post")[:, 0]
    np.testing.assert_allclose(actions, np.tanh(mean) * 2.0, rtol=1e-5, atol=1e-5)


def test_default_layers_are_all_outputs(store: Store, saved_models: dict[str, Path]) -> None:
    policy = load_policy(saved_models["DQN"])
    run = record_rollout(store, policy, "CartPole-v1", steps=20)
    expected = [name for name in describe_layers(policy) if name.endswith(":post")]
    assert run.layers == expected


def test_wrong_environment_for_model(store: Store, saved_models: dict[str, Path]) -> None:
    with pytest.raises(SpaceMismatchError) as caught:
        record_rollout(store, str(saved_models["SAC"]), "CartPole-v1", steps=10)
    assert "Box(-2.0, 2.0, (1,), float32)" in str(caught.value)
    assert "Discrete(2)" in str(caught.value)


def test_explicit_algorithm_mismatch(saved_models: dict[str, Path]) -> None:
    with pytest.raises(UnknownPolicyError) as caught:
        load_sb3(saved_models["SAC"], algorithm="DQN")
    assert "is not a Stable-Baselines3 model of DQN" in str(caught.value)
    with pytest.raises(UnknownPolicyError, match="not supported"):
        load_sb3(saved_models["SAC"], algorithm="TRPO")  # type: ignore[arg-type]
    assert "TRPO" not in _SB3_ALGORITHMS
