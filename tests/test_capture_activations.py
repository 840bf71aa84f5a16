"""Recorded activations and step context against a direct forward pass and a replay of the env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import CARTPOLE_OBSERVATIONS, RecordedRuns, layer_activations, recorded_observations
from interlatent_mcp.capture import describe_layers, load_policy, record_rollout
from interlatent_mcp.store import Store

# The step variables hold float32 observations exactly, so the only difference between a
# recorded activation and a fresh forward pass is float32 rounding.
ATOL = 1e-5
RTOL = 1e-5


def forward_points(module: nn.Module, observations: np.ndarray) -> dict[str, np.ndarray]:
    """Run the cartpole MLP by hand, one module at a time, and return every :pre and :post value."""
    values: dict[str, np.ndarray] = {}
    x = torch.from_numpy(observations)
    with torch.inference_mode():
        for name, child in module.named_children():
            values[f"{name}:pre"] = x.numpy().copy()
            x = child(x)
            values[f"{name}:post"] = x.numpy().copy()
    return values


def test_default_layers_of_builtin_policy(cartpole_policy) -> None:
    assert cartpole_policy.default_layers == ("act1:pre", "act1:post", "act2:pre", "act2:post")
    widths = describe_layers(cartpole_policy)
    assert widths == {
        "fc1:pre": 4, "fc1:post": 64, "act1:pre": 64, "act1:post": 64,
        "fc2:pre": 64, "fc2:post": 64, "act2:pre": 64, "act2:post": 64,
        "logits:pre": 64, "logits:post": 2,
    }


@pytest.mark.parametrize("run_name", ["default_run", "second_run"])
def test_default_layers_equal_forward_pass(recorded: RecordedRuns, run_name: str) -> None:
    run = getattr(recorded, run_name)
    assert run.layers == ["act1:pre", "act1:post", "act2:pre", "act2:post"]
    expected = forward_points(recorded.policy.module, recorded_observations(recorded.store, run))
    for layer in run.layers:
        actual = layer_activations(recorded.store, run, layer)
        assert actual.shape == (run.n_steps, 64), layer
        assert actual.dtype == np.float32
        np.testing.assert_allclose(actual, expected[layer], rtol=RTOL, atol=ATOL, err_msg=layer)


def test_custom_layers_equal_forward_pass(recorded: RecordedRuns) -> None:
    run = recorded.custom_run
    # A bare module path means its output.
    assert run.layers == ["fc1:post", "act1:post", "logits:post"]
    expected = forward_points(recorded.policy.module, recorded_observations(recorded.store, run))
    for layer in run.layers:
        actual = layer_activations(recorded.store, run, layer)
        np.testing.assert_allclose(actual, expected[layer], rtol=RTOL, atol=ATOL, err_msg=layer)


def test_recorded_action_is_greedy_logit(recorded: RecordedRuns) -> None:
    run = recorded.custom_run
    logits = layer_activations(recorded.store, run, "logits:post")
    steps = recorded.store.read_step_range(run.run_id)
    actions = steps.variables[:, run.variables.index("action")]
    np.testing.assert_array_equal(actions, logits.argmax(axis=1))


def test_step_context_matches_replay(recorded: RecordedRuns) -> None:
    """Replaying the recorded actions in a fresh env reproduces every stored variable and flag."""
    store, run = recorded.store, recorded.default_run
    steps = store.read_step_range(run.run_id)
    observations = recorded_observations(store, run)
    column = {name: run.variables.index(name) for name in run.variables}
    env = gym.make("CartPole-v1")
    episode, t = 0, 0
    obs, _ = env.reset(seed=run.seed + episode)
    for step in range(run.n_steps):
        np.testing.assert_array_equal(observations[step], obs)
        assert steps.episode[step] == episode
        assert steps.t[step] == t
        assert steps.variables[step, column["t"]] == t
        action = int(steps.variables[step, column["action"]])
        obs, reward, terminated, truncated, _ = env.step(action)
        assert steps.variables[step, column["reward"]] == reward
        assert steps.terminated[step] == terminated
        assert steps.truncated[step] == truncated
        t += 1
        if terminated or truncated:
            episode, t = episode + 1, 0
            obs, _ = env.reset(seed=run.seed + episode)
    env.close()


def test_episodes_cover_run(recorded: RecordedRuns) -> None:
    run = recorded.default_run
    episodes = recorded.store.list_episodes(run.run_id)
    # The shipped policy balances the pole until the 500-step limit truncates the episode.
    # The run stops 200 steps into the third episode.
    assert [e.length for e in episodes] == [500, 500, 200]
    assert [e.first_step for e in episodes] == [0, 500, 1000]
    assert [e.seed for e in episodes] == [0, 1, 2]
    assert [e.truncated for e in episodes] == [True, True, False]
    assert [e.terminated for e in episodes] == [False, False, False]
    assert [e.return_ for e in episodes] == [500.0, 500.0, 200.0]
    assert run.n_episodes == 3
    assert run.status == "complete"


@pytest.mark.parametrize("n_steps, chunk_steps", [(700, 128), (512, 128), (1, 1), (300, 1024)])
def test_one_row_per_run_layer_chunk(store: Store, n_steps: int, chunk_steps: int) -> None:
    layers = ["fc1:post", "act1:post", "logits:post"]
    run = record_rollout(store, "cartpole-ppo", steps=n_steps, chunk_steps=chunk_steps, layers=layers)
    conn = store.connections.get()
    n_chunks = -(-n_steps // chunk_steps)
    rows = conn.execute(
        "SELECT count(*) FROM activation_chunks WHERE run_id = ?", (run.run_id,)
    ).fetchone()[0]
    assert rows == n_chunks * len(layers)
    per_key = conn.execute(
        "SELECT count(*) FROM activation_chunks WHERE run_id = ? GROUP BY layer_id, chunk",
        (run.run_id,),
    ).fetchall()
    assert {row[0] for row in per_key} == {1}
    step_rows = conn.execute(
        "SELECT count(*), sum(n_steps) FROM step_chunks WHERE run_id = ?", (run.run_id,)
    ).fetchone()
    assert tuple(step_rows) == (n_chunks, n_steps)
    assert run.n_steps == n_steps


def test_read_activations_slices_across_chunks(recorded: RecordedRuns) -> None:
    store, run = recorded.store, recorded.default_run
    layer_id = store.run_layer_ids(run.run_id)["act2:post"]
    whole = store.read_activations(run.run_id, layer_id)
    for start, stop in [(0, 1), (99, 101), (150, 950), (1150, None), (1199, 1200), (0, None)]:
        part = store.read_activations(run.run_id, layer_id, start, stop)
        np.testing.assert_array_equal(part, whole[start:stop])


def test_chunks_iterate_in_step_order(recorded: RecordedRuns) -> None:
    store, run = recorded.store, recorded.custom_run
    layer_id = store.run_layer_ids(run.run_id)["fc1:post"]
    starts = [start for start, _block in store.iter_activation_chunks(run.run_id, layer_id)]
    assert starts == list(range(0, 700, 128))
    step_chunks = list(store.iter_step_chunks(run.run_id))
    assert [chunk.step_start for chunk in step_chunks] == starts
    assert sum(chunk.n_steps for chunk in step_chunks) == 700


def test_step_context_at_one_step(recorded: RecordedRuns) -> None:
    store, run = recorded.store, recorded.default_run
    context = store.get_step_context(run.run_id, 537)
    assert (context.episode, context.t) == (1, 37)
    observations = recorded_observations(store, run)
    for index, name in enumerate(CARTPOLE_OBSERVATIONS):
        assert context.variables[name] == pytest.approx(float(observations[537, index]))
    assert set(context.variables) == set(run.variables)


def test_demo_policy_greedy_return(store: Store) -> None:
    # The evaluation seeds 10000..10019 of scripts/train_demo_policies.py.
    run = record_rollout(store, "cartpole-ppo", episodes=20, seed=10_000, layers=["logits:post"],
                         chunk_steps=4096)
    returns = [episode.return_ for episode in store.list_episodes(run.run_id)]
    assert len(returns) == 20
    assert np.mean(returns) >= 475.0


def test_torch_policy_with_box_actions(store: Store) -> None:
    """A plain torch module on Pendulum: Box actions are clipped, every step's output recorded."""
    env = gym.make("Pendulum-v1")
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    with torch.no_grad():
        module[2].weight.mul_(50.0)  # outputs far beyond the [-2, 2] bounds
    from interlatent_mcp.capture import TorchPolicy

    policy = TorchPolicy(module, observation_space=env.observation_space,
                         action_space=env.action_space, name="pendulum-mlp")
    env.close()
    run = record_rollout(store, policy, "Pendulum-v1", steps=250, layers=["0", "2:post"],
                         chunk_steps=64)
    assert run.variables[:3] == ["cos_theta", "sin_theta", "angular_velocity"]
    steps = store.read_step_range(run.run_id)
    actions = steps.variables[:, run.variables.index("action")]
    assert actions.min() >= -2.0
    assert actions.max() <= 2.0
    outputs = layer_activations(store, run, "2:post")[:, 0]
    np.testing.assert_allclose(actions, np.clip(outputs, -2.0, 2.0), rtol=RTOL, atol=ATOL)
    observations = recorded_observations(store, run, ("cos_theta", "sin_theta", "angular_velocity"))
    with torch.inference_mode():
        hidden = module[0](torch.from_numpy(observations)).numpy()
    np.testing.assert_allclose(layer_activations(store, run, "0:post"), hidden, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("capture_path", ["wrapped forward", "forward hooks"])
def test_inplace_relu_captured_before_overwrite(store: Store, capture_path: str) -> None:
    """With ReLU(inplace=True), the :pre value is the linear output, not the rectified one."""
    env = gym.make("CartPole-v1")
    torch.manual_seed(1)
    module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    if capture_path == "forward hooks":
        # Capture cannot replace a forward set on the instance, so it installs torch hooks.
        module[1].forward = module[1].forward
    from interlatent_mcp.capture import TorchPolicy

    policy = TorchPolicy(module, observation_space=env.observation_space,
                         action_space=env.action_space, name="inplace-mlp")
    env.close()
    run = record_rollout(store, policy, "CartPole-v1", steps=200, layers=["1:pre", "1:post"],
                         chunk_steps=50)
    observations = recorded_observations(store, run)
    with torch.inference_mode():
        linear = module[0](torch.from_numpy(observations)).numpy()
    pre = layer_activations(store, run, "1:pre")
    assert (pre < 0).any()
    np.testing.assert_allclose(pre, linear, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(layer_activations(store, run, "1:post"), np.maximum(linear, 0),
                               rtol=RTOL, atol=ATOL)


def test_user_metrics_recorded(store: Store) -> None:
    from interlatent_mcp.capture import StepMetric, episode_return

    metrics = [StepMetric("abs_angle", lambda obs, _reward, _info: abs(float(obs[2]))),
               episode_return()]
    run = record_rollout(store, "cartpole-ppo", steps=600, metrics=metrics, chunk_steps=256,
                         layers=["act1:post"])
    assert run.variables[-2:] == ["abs_angle", "return_so_far"]
    steps = store.read_step_range(run.run_id)
    column = {name: run.variables.index(name) for name in run.variables}
    np.testing.assert_array_equal(steps.variables[:, column["abs_angle"]],
                                  np.abs(steps.variables[:, column["pole_angle"]]))
    # The running return includes the current step and restarts with each episode.
    np.testing.assert_array_equal(steps.variables[:, column["return_so_far"]], steps.t + 1.0)
    episodes = store.list_episodes(run.run_id)
    assert [e.metrics["return_so_far"] for e in episodes] == [500.0, 100.0]


def test_reload_same_policy_reuses_record(store: Store) -> None:
    first = record_rollout(store, "cartpole-ppo", steps=10)
    second = record_rollout(store, load_policy("cartpole-ppo"), steps=10)
    assert first.policy_id == second.policy_id
    assert len(store.list_policies()) == 1


def test_episode_budget_with_terminating_policy(store: Store) -> None:
    env = gym.make("CartPole-v1")
    torch.manual_seed(3)
    from interlatent_mcp.capture import TorchPolicy

    policy = TorchPolicy(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)),
                         observation_space=env.observation_space, action_space=env.action_space,
                         name="untrained", env_id="CartPole-v1")
    env.close()
    run = record_rollout(store, policy, episodes=4, seed=7, chunk_steps=16, layers=["1"])
    episodes = store.list_episodes(run.run_id)
    assert run.requested_episodes == 4
    assert run.n_episodes == 4
    assert [e.seed for e in episodes] == [7, 8, 9, 10]
    assert all(e.terminated and not e.truncated for e in episodes)
    assert run.n_steps == sum(e.length for e in episodes)
    steps = store.read_step_range(run.run_id)
    ends = np.flatnonzero(steps.terminated)
    np.testing.assert_array_equal(ends, [e.first_step + e.length - 1 for e in episodes])
    np.testing.assert_array_equal(np.bincount(steps.episode), [e.length for e in episodes])


def test_same_seed_same_recording(store: Store) -> None:
    first = record_rollout(store, "cartpole-ppo", steps=300, seed=21, layers=["act2:post"])
    second = record_rollout(store, "cartpole-ppo", steps=300, seed=21, layers=["act2:post"],
                            chunk_steps=7)
    np.testing.assert_array_equal(layer_activations(store, first, "act2:post"),
                                  layer_activations(store, second, "act2:post"))
    np.testing.assert_array_equal(store.read_step_range(first.run_id).variables,
                                  store.read_step_range(second.run_id).variables)
