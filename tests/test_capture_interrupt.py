"""Runs that end early: Ctrl-C inside a rollout, a stop request, and a recording process that dies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import layer_activations, recorded_observations
from interlatent_mcp.capture import StepMetric, TorchPolicy, load_policy, record_rollout
from interlatent_mcp.capture.rollout import STOP_CHECK_INTERVAL
from interlatent_mcp.store import RunRecord, Store

LAYERS = ["fc1:post", "act1:post", "logits:post"]
CHUNK_STEPS = 64
INTERRUPT_AT = 300  # steps completed before Ctrl-C: four full chunks and 44 buffered steps


class InterruptingPolicy(TorchPolicy):
    """The shipped CartPole policy, raising KeyboardInterrupt when asked for one action too many."""

    def __init__(self, limit: int) -> None:
        base = load_policy("cartpole-ppo")
        super().__init__(base.module, observation_space=base.observation_space,
                         action_space=base.action_space, name="cartpole-interrupting",
                         source="test:interrupting", env_id=base.env_id)
        self.limit = limit
        self.calls = 0

    def act(self, obs: Any) -> Any:
        if self.calls == self.limit:
            raise KeyboardInterrupt
        self.calls += 1
        return super().act(obs)


def interrupting_metric(limit: int) -> StepMetric:
    calls = {"n": 0}

    def value(obs: Any, _reward: float, _info: dict[str, Any]) -> float:
        if calls["n"] == limit:
            raise KeyboardInterrupt
        calls["n"] += 1
        return float(obs[0])
    return StepMetric("cart_offset", value)


def record_until_interrupted(store: Store, source: str) -> RunRecord:
    if source == "policy":
        arguments: dict[str, Any] = {"policy": InterruptingPolicy(INTERRUPT_AT)}
    else:
        arguments = {"policy": "cartpole-ppo", "metrics": [interrupting_metric(INTERRUPT_AT)]}
    with pytest.raises(KeyboardInterrupt):
        record_rollout(store, steps=2000, layers=LAYERS, chunk_steps=CHUNK_STEPS, **arguments)
    (run,) = store.list_runs()
    return run


def assert_activations_match_policy(store: Store, run: RunRecord) -> None:
    module = load_policy("cartpole-ppo").module
    with torch.inference_mode():
        hidden = module.fc1(torch.from_numpy(recorded_observations(store, run))).numpy()
    np.testing.assert_allclose(layer_activations(store, run, "fc1:post"), hidden, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("source", ["policy", "metric"])
def test_interrupt_keeps_flushed_chunks(tmp_path: Path, source: str) -> None:
    path = tmp_path / "interrupted.sqlite"
    with Store(path) as store:
        run = record_until_interrupted(store, source)
        assert run.status == "interrupted"
        assert run.error is not None
        assert run.error.startswith("KeyboardInterrupt")
        assert run.n_steps == INTERRUPT_AT
        assert run.finished_at is not None

    with Store(path) as reopened:
        assert reopened.integrity_check() == "ok"
        run = reopened.get_run(run.run_id)
        assert run.status == "interrupted"
        assert run.n_steps == INTERRUPT_AT
        n_chunks = -(-INTERRUPT_AT // CHUNK_STEPS)
        step_chunks = list(reopened.iter_step_chunks(run.run_id))
        assert [chunk.n_steps for chunk in step_chunks] == [64, 64, 64, 64, 44]
        for name, layer_id in reopened.run_layer_ids(run.run_id).items():
            blocks = list(reopened.iter_activation_chunks(run.run_id, layer_id))
            assert len(blocks) == n_chunks, name
            assert sum(block.shape[0] for _start, block in blocks) == INTERRUPT_AT
            assert np.isfinite(np.concatenate([block for _start, block in blocks])).all()
        assert_activations_match_policy(reopened, run)
        # The first episode was cut off before it ended, so no episode was finished.
        assert reopened.list_episodes(run.run_id) == []


def test_interrupted_metric_column_complete(store: Store) -> None:
    run = record_until_interrupted(store, "metric")
    steps = store.read_step_range(run.run_id)
    column = run.variables.index("cart_offset")
    np.testing.assert_array_equal(steps.variables[:, column],
                                  steps.variables[:, run.variables.index("cart_position")])


def test_store_usable_after_interrupt(store: Store) -> None:
    record_until_interrupted(store, "policy")
    after = record_rollout(store, "cartpole-ppo", steps=100, layers=LAYERS, chunk_steps=CHUNK_STEPS)
    assert after.status == "complete"
    assert after.n_steps == 100
    assert [run.status for run in store.list_runs()] == ["complete", "interrupted"]


def test_should_stop_ends_run_interrupted(store: Store) -> None:
    checks = []

    def should_stop() -> bool:
        checks.append(True)
        return len(checks) >= 2

    run = record_rollout(store, "cartpole-ppo", steps=5000, layers=LAYERS, chunk_steps=100,
                         should_stop=should_stop)
    assert run.status == "interrupted"
    assert run.error is not None
    assert "stopped on request" in run.error
    assert run.n_steps == 2 * STOP_CHECK_INTERVAL
    assert len(checks) == 2
    # The first episode reached the 500-step limit. The one that was running is kept too,
    # neither terminated nor truncated by the environment.
    first, last = store.list_episodes(run.run_id)
    assert first.length == 500
    assert first.truncated
    assert last.length == 2 * STOP_CHECK_INTERVAL - 500
    assert not last.terminated
    assert not last.truncated
    assert run.n_episodes == 2
    assert len(store.read_activations(run.run_id, store.run_layer_ids(run.run_id)["act1:post"])) == run.n_steps


def test_should_stop_false_completes(store: Store) -> None:
    run = record_rollout(store, "cartpole-ppo", steps=600, layers=LAYERS, should_stop=lambda: False)
    assert run.status == "complete"
    assert run.n_steps == 600


CRASHING_RECORDER = textwrap.dedent("""
    import os, sys
    import torch
    torch.set_num_threads(1)
    from interlatent_mcp.capture import record_rollout
    from interlatent_mcp.store import Store

    def progress(steps, episodes):
        if steps >= 300:
            os._exit(3)  # the process dies without finishing the run or closing the store

    record_rollout(Store(sys.argv[1]), "cartpole-ppo", steps=5000, chunk_steps=100,
                   layers=["act1:post"], progress=progress)
""")


def test_dead_process_run_marked_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "crashed.sqlite"
    result = subprocess.run([sys.executable, "-c", CRASHING_RECORDER, str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr

    with Store(path) as store:
        assert store.integrity_check() == "ok"
        (run,) = store.list_runs()
        assert run.status == "running"
        assert store.mark_running_runs_interrupted() == [run.run_id]
        run = store.get_run(run.run_id)
        assert run.status == "interrupted"
        assert run.n_steps == 300
        assert run.error is not None
        layer_id = store.run_layer_ids(run.run_id)["act1:post"]
        assert store.read_activations(run.run_id, layer_id).shape == (300, 64)
        assert store.mark_running_runs_interrupted() == []


class InterruptAfterCommitStore(Store):
    """A real store whose third chunk write commits and then gets Ctrl-C, as a signal can."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes = 0

    def write_chunk(self, *args: Any, **kwargs: Any) -> None:
        super().write_chunk(*args, **kwargs)
        self.writes += 1
        if self.writes == 3:
            raise KeyboardInterrupt


def test_interrupt_after_commit_keeps_chunks(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with InterruptAfterCommitStore(tmp_path / "store.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            record_rollout(store, "cartpole-ppo", steps=1000, layers=LAYERS, chunk_steps=CHUNK_STEPS)
        (run,) = store.list_runs()
        assert run.status == "interrupted"
        assert run.n_steps == 3 * CHUNK_STEPS
        assert store.integrity_check() == "ok"
    assert "could not write" not in caplog.text
