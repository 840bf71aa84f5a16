"""The SQLite store: file settings, reopening, migrations, chunk I/O and its lookup errors."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from interlatent_mcp.errors import (
    InvalidArgumentError,
    NotFoundError,
    StoreError,
    StoreVersionError,
    UnknownLayerError,
    UnknownPolicyError,
    UnknownRunError,
)
from interlatent_mcp.store import SCHEMA_VERSION, EpisodeRecord, RunRecord, StepChunk, Store
from interlatent_mcp.store.connection import STORE_ENV_VAR, default_store_path

VARIABLES = ["x", "action", "reward", "t"]
WIDTH = 3


def add_test_policy(store: Store) -> int:
    record = store.add_policy(
        name="tiny", kind="torch", source="test:tiny", fingerprint="f" * 64,
        observation_space="Box(-1.0, 1.0, (1,), float32)", action_space="Discrete(2)",
        layers={"fc:post": WIDTH, "head:post": 2},
    )
    return record.policy_id


def synthetic_steps(step_start: int, n: int, episode: int = 0) -> StepChunk:
    steps = np.arange(step_start, step_start + n)
    variables = np.stack([np.sin(steps), steps % 2, np.ones(n), steps - step_start], axis=1)
    truncated = np.zeros(n, dtype=bool)
    truncated[-1] = True
    return StepChunk(step_start, np.full(n, episode, dtype=np.int32),
                     (steps - step_start).astype(np.int32), np.zeros(n, dtype=bool), truncated,
                     variables.astype(np.float64))


def synthetic_activations(step_start: int, n: int) -> np.ndarray:
    steps = np.arange(step_start, step_start + n, dtype=np.float32)[:, None]
    return np.concatenate([steps, -steps, steps * 0.5], axis=1)


def write_synthetic_run(store: Store, chunk_sizes: list[int]) -> RunRecord:
    """Write a run of one episode per chunk through the store API, without a rollout."""
    policy_id = add_test_policy(store)
    layer = store.get_layer(policy_id, "fc:post")
    run = store.create_run(policy_id=policy_id, env_id="Test-v0", env_kwargs={}, seed=0,
                           layer_ids=[layer.layer_id], variables=VARIABLES,
                           chunk_steps=max(chunk_sizes))
    start = 0
    for chunk, n in enumerate(chunk_sizes):
        episode = EpisodeRecord(run.run_id, chunk, chunk, start, n, float(n), False, True, {})
        store.write_chunk(run.run_id, chunk, synthetic_steps(start, n, chunk),
                          {layer.layer_id: synthetic_activations(start, n)}, [episode])
        start += n
    return store.finish_run(run.run_id, status="complete", duration_s=0.1)


def test_new_store_settings(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "store.sqlite"
    with Store(path) as store:
        assert path.exists()
        assert store.schema_version == SCHEMA_VERSION
        conn = store.connections.get()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 65536
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.integrity_check() == "ok"


def test_store_readable_by_plain_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        write_synthetic_run(store, [5, 7])
        store.checkpoint()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*), sum(n_steps) FROM step_chunks").fetchone() == (2, 12)
        blob = conn.execute("SELECT data FROM activation_chunks WHERE chunk = 1").fetchone()[0]
    finally:
        conn.close()
    # Little-endian float32, (n_steps, width), row-major.
    np.testing.assert_array_equal(np.frombuffer(blob, "<f4").reshape(7, WIDTH),
                                  synthetic_activations(5, 7))


def test_reopen_after_close(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = Store(path)
    run = write_synthetic_run(store, [4, 4, 2])
    store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.get_run(run.run_id)

    with Store(path) as reopened:
        again = reopened.get_run(run.run_id)
        assert again == run
        layer_id = reopened.run_layer_ids(run.run_id)["fc:post"]
        np.testing.assert_array_equal(reopened.read_activations(run.run_id, layer_id),
                                      synthetic_activations(0, 10))
        assert [e.length for e in reopened.list_episodes(run.run_id)] == [4, 4, 2]
        assert reopened.integrity_check() == "ok"


def test_default_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORE_ENV_VAR, str(tmp_path / "from-env.sqlite"))
    assert default_store_path() == tmp_path / "from-env.sqlite"
    with Store() as store:
        assert store.path == tmp_path / "from-env.sqlite"
    assert (tmp_path / "from-env.sqlite").exists()


def table_names(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


@pytest.mark.parametrize("old_version", range(1, SCHEMA_VERSION))
def test_migrates_older_schema(tmp_path: Path, old_version: int) -> None:
    path = tmp_path / "old.sqlite"
    with Store(path, _target_version=old_version) as old:
        assert old.schema_version == old_version
        run = write_synthetic_run(old, [6, 6])
    assert ("analyses" in table_names(path)) == (old_version >= 2)
    assert "notes" not in table_names(path)

    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.connections.get().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.get_run(run.run_id) == run
        layer_id = store.run_layer_ids(run.run_id)["fc:post"]
        np.testing.assert_array_equal(store.read_activations(run.run_id, layer_id),
                                      synthetic_activations(0, 12))

        # The tables added by later versions work on the migrated file.
        from interlatent_mcp.analysis import compute_stats

        analysis = compute_stats(store, [run.run_id])
        (stats,) = store.get_channel_stats(analysis.analysis_id, layer_id, [0])
        assert stats.count == 12
        note = store.add_note("the first channel counts steps", author="test", layer_id=layer_id,
                              channel=0, run_id=run.run_id)
        assert store.list_notes(layer_id=layer_id) == [note]
        store.add_explanation(layer_id=layer_id, channel=0, text="counts steps", author="test",
                              method="manual")
        store.add_explanation(layer_id=layer_id, channel=0, text="the step number", author="test",
                              method="manual")
        assert [e.version for e in store.list_explanations(layer_id, 0)] == [2, 1]
        assert [e.text for e in store.search_explanations("steps")] == ["counts steps"]
        assert store.integrity_check() == "ok"


def test_newer_schema_rejected(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreVersionError) as caught:
        Store(path)
    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"versions up to {SCHEMA_VERSION}" in message
    assert str(path) in message


def test_read_only_store(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        run = write_synthetic_run(store, [3])
    with Store(path, read_only=True) as reader:
        assert reader.get_run(run.run_id) == run


def test_read_only_older_schema_rejected(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    Store(path, _target_version=1).close()
    with pytest.raises(StoreVersionError, match="open it once without read_only"):
        Store(path, read_only=True)


def test_unknown_run(store: Store) -> None:
    with pytest.raises(UnknownRunError) as caught:
        store.get_run(42)
    assert "run 42 is not in the store" in str(caught.value)
    with pytest.raises(UnknownRunError, match="run 42"):
        list(store.iter_step_chunks(42))
    with pytest.raises(UnknownRunError, match="run 42"):
        store.read_step_range(42)
    with pytest.raises(UnknownRunError, match="run 42"):
        store.delete_run(42)


def test_unknown_policy_and_layer(store: Store) -> None:
    policy_id = add_test_policy(store)
    with pytest.raises(UnknownPolicyError, match="'nope'.*tiny"):
        store.get_policy("nope")
    with pytest.raises(UnknownLayerError) as caught:
        store.get_layer(policy_id, "fc:pre")
    assert "known layers: fc:post, head:post" in str(caught.value)
    with pytest.raises(UnknownLayerError, match="layer id 999"):
        store.get_layer_by_id(999)


def test_add_policy_is_idempotent(store: Store) -> None:
    first = add_test_policy(store)
    second = add_test_policy(store)
    assert first == second
    assert [layer.name for layer in store.list_layers(first)] == ["fc:post", "head:post"]
    assert store.add_layer(first, "fc:post", WIDTH).layer_id == store.get_layer(first, "fc:post").layer_id


def test_write_chunk_rejects_wrong_shape(store: Store) -> None:
    run = write_synthetic_run(store, [3])
    layer_id = store.run_layer_ids(run.run_id)["fc:post"]
    with pytest.raises(InvalidArgumentError, match=r"shape \(4, 3\); expected \(5, width\)"):
        store.write_chunk(run.run_id, 1, synthetic_steps(3, 5), {layer_id: np.zeros((4, 3))})
    # The failed chunk left nothing behind.
    assert store.read_step_range(run.run_id).n_steps == 3


def test_read_ranges_across_chunks(store: Store) -> None:
    run = write_synthetic_run(store, [10, 10, 5])
    layer_id = store.run_layer_ids(run.run_id)["fc:post"]
    whole = synthetic_activations(0, 25)
    whole_variables = np.concatenate([synthetic_steps(0, 10).variables, synthetic_steps(10, 10).variables,
                                      synthetic_steps(20, 5).variables])
    for start, stop in [(0, 25), (3, 17), (9, 11), (10, 20), (24, 25), (20, None), (25, None)]:
        np.testing.assert_array_equal(store.read_activations(run.run_id, layer_id, start, stop),
                                      whole[start:stop])
        steps = store.read_step_range(run.run_id, start, stop)
        assert steps.step_start == start or steps.n_steps == 0
        assert steps.n_steps == len(whole[start:stop])
        np.testing.assert_array_equal(steps.variables, whole_variables[start:stop])


def test_step_context(store: Store) -> None:
    run = write_synthetic_run(store, [10, 10, 5])
    context = store.get_step_context(run.run_id, 13)
    assert (context.episode, context.t, context.truncated) == (1, 3, False)
    assert context.variables == {"x": pytest.approx(np.sin(13)), "action": 1.0, "reward": 1.0, "t": 3.0}
    assert store.get_step_context(run.run_id, 19).truncated
    with pytest.raises(NotFoundError, match="step 25 is outside run"):
        store.get_step_context(run.run_id, 25)


def test_list_runs_newest_first(store: Store) -> None:
    runs = [write_synthetic_run(store, [2]) for _ in range(5)]
    store.finish_run(runs[1].run_id, status="failed", duration_s=0.0, error="boom")
    assert [r.run_id for r in store.list_runs()] == [5, 4, 3, 2, 1]
    assert [r.run_id for r in store.list_runs(offset=1, limit=2)] == [4, 3]
    assert [r.run_id for r in store.list_runs(status="failed")] == [2]
    assert store.list_runs(env_id="Other-v0") == []
    assert store.count_runs() == 5
    with pytest.raises(InvalidArgumentError, match="'done'"):
        store.finish_run(1, status="done", duration_s=0.0)


def test_delete_run_removes_chunks(store: Store) -> None:
    kept = write_synthetic_run(store, [4])
    deleted = write_synthetic_run(store, [4, 4])
    store.delete_run(deleted.run_id)
    conn = store.connections.get()
    for table in ("activation_chunks", "step_chunks", "episodes", "run_layers"):
        run_ids = {row[0] for row in conn.execute(f"SELECT run_id FROM {table}")}
        assert run_ids == {kept.run_id}, table
    with pytest.raises(UnknownRunError):
        store.get_run(deleted.run_id)


def test_finish_run_counts_written_data(store: Store) -> None:
    run = write_synthetic_run(store, [3, 3, 1])
    assert run.n_steps == 7
    assert run.n_episodes == 3
    assert run.status == "complete"
    assert run.duration_s == pytest.approx(0.1)


def test_concurrent_readers_and_writer(tmp_path: Path) -> None:
    """Readers on other threads see whole chunks only while a writer appends them."""
    with Store(tmp_path / "store.sqlite") as store:
        run = write_synthetic_run(store, [8])
        layer_id = store.run_layer_ids(run.run_id)["fc:post"]
        errors: list[BaseException] = []
        done = threading.Event()

        def read() -> None:
            try:
                while not done.is_set():
                    values = store.read_activations(run.run_id, layer_id)
                    assert len(values) % 8 == 0
                    np.testing.assert_array_equal(values, synthetic_activations(0, len(values)))
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for reader in readers:
            reader.start()
        for chunk in range(1, 40):
            store.write_chunk(run.run_id, chunk, synthetic_steps(chunk * 8, 8),
                              {layer_id: synthetic_activations(chunk * 8, 8)})
        done.set()
        for reader in readers:
            reader.join(timeout=30)
        assert errors == []
        assert len(store.read_activations(run.run_id, layer_id)) == 320
