"""The transcoder tools through the MCP SDK's client: train, list, evaluate, cancel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import SyncClient, connect, wait_for_job

from interlatent_mcp.capture import record_rollout
from interlatent_mcp.server import create_server
from interlatent_mcp.store import Store
from interlatent_mcp.tools.base import ServerContext

LAYERS = ["act2:pre", "act2:post"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncClient]:
    """A server over a store with a 12-episode CartPole run (1) and a run without act2 (2)."""
    path: Path = tmp_path_factory.mktemp("transcoder-tools") / "store.sqlite"
    with Store(path) as store:
        record_rollout(store, "cartpole-ppo", episodes=12, layers=LAYERS, seed=0)
        record_rollout(store, "cartpole-ppo", steps=100, layers=["act1:post"], seed=0)
    context = ServerContext.open(path)
    try:
        with connect(create_server(context)) as connected:
            yield connected
    finally:
        context.close()


@pytest.fixture(scope="module")
def trained(client: SyncClient) -> dict[str, Any]:
    progress: list[tuple[float, float | None, str | None]] = []
    result = client.ok("train_transcoder", {
        "run_ids": [1], "input_layer": "act2:pre", "output_layer": "act2:post",
        "max_epochs": 6, "name": "act2-small", "wait_seconds": 50,
    }, progress=lambda *update: progress.append(update))
    if result["transcoder"] is None:
        job = wait_for_job(client, result["job"])
        result = {**result, "job": job, "transcoder": job["result"]}
    return {**result, "progress": progress}


def test_train_returns_summary(trained: dict[str, Any]) -> None:
    summary = trained["transcoder"]
    assert trained["job"]["status"] == "complete"
    assert summary["name"] == "act2-small"
    assert summary["kind"] == "transcoder"
    assert summary["architecture"] == "topk"
    assert summary["n_latents"] == 256
    assert summary["k"] == 8
    assert summary["latent_layer"] == "transcoder/act2-small"
    assert summary["run_ids"] == [1]
    assert 0 <= summary["held_out"]["fvu"] < 0.2
    assert summary["held_out"]["mean_l0"] <= 8
    assert summary["epochs"] <= 6
    assert "compute_stats" in trained["next_step"]


def test_train_reports_epoch_progress(trained: dict[str, Any]) -> None:
    assert trained["progress"], "no progress notification arrived"
    values = [value for value, _total, _message in trained["progress"]]
    assert values == sorted(values)
    # max_epochs + 1: the last unit records the latents.
    assert all(total == 7 for _value, total, _message in trained["progress"])
    assert any("epoch" in (message or "") for _value, _total, message in trained["progress"])
    assert trained["progress"][-1][0] == 7
    assert trained["progress"][-1][2].startswith("finished: trained 'act2-small' for 6 epochs")


def test_get_job_after_training_returns_summary(client: SyncClient,
                                                trained: dict[str, Any]) -> None:
    job = client.ok("get_job", {"job_id": trained["job"]["job_id"]})
    assert job["status"] == "complete"
    assert job["result"] == trained["transcoder"]
    epochs = trained["transcoder"]["epochs"]
    assert job["message"].startswith(f"finished: trained 'act2-small' for {epochs} epochs")
    assert job["progress"] == job["total"] == 7


def test_invalid_name_rejected_before_job(client: SyncClient, trained: dict[str, Any]) -> None:
    jobs_before = client.ok("list_jobs", {"limit": 100})["jobs"]
    invalid = client.error("train_transcoder", {"run_ids": [1], "input_layer": "act2:pre",
                                                "name": "two words"})
    assert "transcoder name 'two words' is invalid" in invalid
    assert "job" not in invalid
    taken = client.error("train_transcoder", {"run_ids": [1], "input_layer": "act2:pre",
                                              "name": "act2-small"})
    assert "a transcoder named 'act2-small' already exists" in taken
    assert "job" not in taken
    assert client.ok("list_jobs", {"limit": 100})["jobs"] == jobs_before


def test_latent_layer_works_with_channel_tools(client: SyncClient,
                                               trained: dict[str, Any]) -> None:
    stats = client.ok("compute_stats", {"run_ids": [1], "layers": ["transcoder/act2-small"],
                                        "wait_seconds": 50})
    if stats["analysis"] is None:
        wait_for_job(client, stats["job"])
    card = client.ok("get_channel", {"layer": "transcoder/act2-small", "channel": 0})
    assert card["layer"] == "transcoder/act2-small"
    dead = client.ok("find_dead", {"layer": "transcoder/act2-small"})
    assert dead["width"] == 256


def test_list_transcoders_pages(client: SyncClient, trained: dict[str, Any]) -> None:
    page = client.ok("list_transcoders", {"limit": 5})
    assert page["total"] == 1
    assert page["next_offset"] is None
    assert [t["name"] for t in page["transcoders"]] == ["act2-small"]
    assert page["transcoders"][0]["held_out"] == trained["transcoder"]["held_out"]
    by_policy = client.ok("list_transcoders", {"policy": "cartpole-ppo"})
    assert by_policy["total"] == 1


def test_evaluate_measures_splice(client: SyncClient, trained: dict[str, Any]) -> None:
    result = client.ok("evaluate_transcoder", {"transcoder": "act2-small", "splice_episodes": 2,
                                               "seed": 7, "wait_seconds": 50})
    evaluation = result["evaluation"] or wait_for_job(client, result["job"])["result"]
    assert evaluation["evaluated_on"] == "held-out episodes"
    assert evaluation["reconstruction"]["fvu"] == pytest.approx(
        trained["transcoder"]["held_out"]["fvu"], rel=1e-6)
    assert sum(evaluation["density_counts"]) <= 256
    splice = evaluation["splice"]
    assert splice["episodes"] == 2
    assert splice["seed"] == 7
    assert 0 <= splice["action_agreement"] <= 1
    listed = client.ok("list_transcoders")["transcoders"][0]
    assert listed["splice"]["return_ratio"] == splice["return_ratio"]


def test_evaluate_on_runs_without_splice(client: SyncClient, trained: dict[str, Any]) -> None:
    result = client.ok("evaluate_transcoder", {"transcoder": trained["transcoder"]["transcoder_id"],
                                               "run_ids": [1], "splice_episodes": 0,
                                               "wait_seconds": 50})
    evaluation = result["evaluation"] or wait_for_job(client, result["job"])["result"]
    assert evaluation["evaluated_on"] == "runs [1]"
    assert evaluation["reconstruction"]["n_steps"] == 12 * 500
    assert evaluation["splice"] is None


def test_tool_errors_explain(client: SyncClient, trained: dict[str, Any]) -> None:
    missing_layer = client.error("train_transcoder", {"run_ids": [2], "input_layer": "act2:pre",
                                                      "output_layer": "act2:post"})
    assert "did not record layers 'act2:pre', 'act2:post'; it recorded act1:post." in missing_layer
    assert "`interlatent rollout cartpole-ppo --layers act2:pre act2:post`" in missing_layer
    assert "record_rollout with policy='cartpole-ppo' and layers=['act2:pre', 'act2:post']" in (
        missing_layer)
    unknown_layer = client.error("train_transcoder", {"run_ids": [1], "input_layer": "fc3:pre"})
    assert "layer 'fc3:pre' does not exist in policy 'cartpole-ppo'" in unknown_layer
    assert "its layers: fc1:pre, fc1:post" in unknown_layer
    duplicate = client.error("train_transcoder", {"run_ids": [1], "input_layer": "act2:pre",
                                                  "name": "act2-small"})
    assert "already exists" in duplicate
    unknown = client.error("evaluate_transcoder", {"transcoder": "ghost"})
    assert "transcoders in the store: act2-small" in unknown


def test_cancel_keeps_best_weights(client: SyncClient) -> None:
    started = client.ok("train_transcoder", {
        "run_ids": [1], "input_layer": "act2:post", "max_epochs": 1000, "name": "cancelled",
        "wait_seconds": 0,
    })
    client.ok("cancel_job", {"job_id": started["job"]["job_id"]})
    job = wait_for_job(client, started["job"])
    assert job["status"] == "cancelled"
    assert job["result"]["stopped"] == "requested"
    assert job["result"]["kind"] == "autoencoder"
    assert job["message"].startswith("stopped on request after")
    names = [t["name"] for t in client.ok("list_transcoders")["transcoders"]]
    assert "cancelled" in names
