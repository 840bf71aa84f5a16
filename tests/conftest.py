"""Shared fixtures: a temporary store, and CartPole runs recorded once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

# Small policies run faster on one thread, and the test machine's cores are shared.
torch.set_num_threads(1)

from interlatent_mcp.capture import Policy, load_policy, record_rollout  # noqa: E402
from interlatent_mcp.store import RunRecord, Store  # noqa: E402

CARTPOLE_OBSERVATIONS = ("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity")


@dataclass(frozen=True)
class RecordedRuns:
    """Runs of the shipped cartpole-ppo policy in one store, shared by the whole session.

    Tests may add analyses to this store but must not change or delete the runs.
    """

    store: Store
    policy: Policy
    default_run: RunRecord
    """Default layers, 1,200 steps from seed 0 in chunks of 100 (two full episodes and a partial one)."""
    second_run: RunRecord
    """Default layers, 900 steps from seed 5 in chunks of 100."""
    custom_run: RunRecord
    """Layers fc1:post, act1:post and logits:post, 700 steps from seed 11 in chunks of 128."""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An empty store in a fresh SQLite file."""
    opened = Store(tmp_path / "store.sqlite")
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def cartpole_policy() -> Policy:
    return load_policy("cartpole-ppo")


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory, cartpole_policy: Policy) -> Iterator[RecordedRuns]:
    path = tmp_path_factory.mktemp("recorded") / "cartpole.sqlite"
    opened = Store(path)
    default_run = record_rollout(opened, cartpole_policy, steps=1200, seed=0, chunk_steps=100)
    second_run = record_rollout(opened, cartpole_policy, steps=900, seed=5, chunk_steps=100)
    custom_run = record_rollout(
        opened, cartpole_policy, steps=700, seed=11, chunk_steps=128,
        layers=["fc1:post", "act1", "logits:post"],
    )
    yield RecordedRuns(opened, cartpole_policy, default_run, second_run, custom_run)
    opened.close()


def recorded_observations(store: Store, run: RunRecord, names: tuple[str, ...] = CARTPOLE_OBSERVATIONS) -> np.ndarray:
    """Rebuild the (n_steps, n_obs) float32 observations the policy acted on from the step variables.

    The variables are float64 copies of float32 observations, so the cast back is exact.
    """
    steps = store.read_step_range(run.run_id)
    columns = [run.variables.index(name) for name in names]
    return steps.variables[:, columns].astype(np.float32)


def layer_activations(store: Store, run: RunRecord, layer: str) -> np.ndarray:
    """Return all recorded (n_steps, width) activations of one layer of a run."""
    return store.read_activations(run.run_id, store.run_layer_ids(run.run_id)[layer])
