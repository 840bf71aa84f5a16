"""The store's transcoder table and the writing of a derived layer's activation chunks."""

from __future__ import annotations

import numpy as np
import pytest

from interlatent_mcp.errors import InvalidArgumentError, NotFoundError
from interlatent_mcp.store import StepChunk, Store


def add_policy(store: Store, name: str = "policy") -> int:
    return store.add_policy(
        name=name, kind="test", source=f"test:{name}", fingerprint="0",
        observation_space="none", action_space="none", layers={"block:post": 3},
    ).policy_id


def add(store: Store, name: str, policy_id: int) -> int:
    return store.add_transcoder(
        name=name, policy_id=policy_id, input_layer="block:pre", output_layer="block:post",
        architecture="topk", config={"k": 2}, metrics={"held_out": {"fvu": 0.1}},
        weights=b"weights of " + name.encode(),
    ).transcoder_id


def test_add_and_get_transcoder(store: Store) -> None:
    policy_id = add_policy(store)
    transcoder_id = add(store, "first", policy_id)
    by_name = store.get_transcoder("first")
    by_id = store.get_transcoder(transcoder_id)
    assert by_name == by_id
    assert by_name.config == {"k": 2}
    assert by_name.metrics == {"held_out": {"fvu": 0.1}}
    assert by_name.latent_layer_id is None
    assert store.get_transcoder_weights(transcoder_id) == b"weights of first"


def test_duplicate_transcoder_name_rejected(store: Store) -> None:
    policy_id = add_policy(store)
    add(store, "first", policy_id)
    with pytest.raises(InvalidArgumentError, match="'first' already exists"):
        add(store, "first", policy_id)


def test_unknown_transcoder_lists_names(store: Store) -> None:
    add(store, "first", add_policy(store))
    with pytest.raises(NotFoundError, match="transcoders in the store: first"):
        store.get_transcoder("second")
    with pytest.raises(NotFoundError, match="99"):
        store.get_transcoder_weights(99)


def test_list_and_count_transcoders(store: Store) -> None:
    one, other = add_policy(store, "one"), add_policy(store, "other")
    for name in ("a", "b", "c"):
        add(store, name, one)
    add(store, "d", other)
    assert [t.name for t in store.list_transcoders()] == ["d", "c", "b", "a"]
    assert [t.name for t in store.list_transcoders(policy_id=one, offset=1, limit=1)] == ["b"]
    assert store.count_transcoders() == 4
    assert store.count_transcoders(policy_id=other) == 1


def test_update_metrics_merges(store: Store) -> None:
    transcoder_id = add(store, "first", add_policy(store))
    updated = store.update_transcoder_metrics(transcoder_id, {"splice": {"return_ratio": 1.0}})
    assert updated.metrics == {"held_out": {"fvu": 0.1}, "splice": {"return_ratio": 1.0}}
    with pytest.raises(NotFoundError):
        store.update_transcoder_metrics(99, {})


def test_derived_layer_chunks_join_run(store: Store) -> None:
    policy_id = add_policy(store)
    source = store.get_layer(policy_id, "block:post")
    run = store.create_run(policy_id=policy_id, env_id="none", env_kwargs={}, seed=0,
                           layer_ids=[source.layer_id], variables=["t"], chunk_steps=4)
    episode = np.zeros(4, dtype=np.int32)
    steps = StepChunk(0, episode, np.arange(4, dtype=np.int32), np.zeros(4, bool),
                      np.zeros(4, bool), np.zeros((4, 1)))
    store.write_chunk(run.run_id, 0, steps, {source.layer_id: np.ones((4, 3), np.float32)})
    store.finish_run(run.run_id, status="complete", duration_s=0.0)

    derived = store.add_layer(policy_id, "transcoder/first", 5, kind="transcoder")
    values = np.arange(20, dtype=np.float32).reshape(4, 5)
    store.write_activation_chunk(run.run_id, derived.layer_id, 0, 0, values)
    assert "transcoder/first" not in store.get_run(run.run_id).layers
    store.add_run_layer(run.run_id, derived.layer_id)
    store.add_run_layer(run.run_id, derived.layer_id)

    assert store.get_run(run.run_id).layers == ["block:post", "transcoder/first"]
    np.testing.assert_array_equal(store.read_activations(run.run_id, derived.layer_id), values)
    assert store.delete_activation_chunks(run.run_id, derived.layer_id) == 1
    assert store.get_run(run.run_id).layers == ["block:post"]
    with pytest.raises(InvalidArgumentError, match="shape"):
        store.write_activation_chunk(run.run_id, derived.layer_id, 0, 0, np.zeros(3, np.float32))


def test_digit_string_falls_back_to_id(store: Store) -> None:
    policy_id = add_policy(store)
    first = add(store, "first", policy_id)
    add(store, "7", policy_id)
    assert store.get_transcoder(str(first)).name == "first"
    assert store.get_transcoder("7").name == "7"
