"""score_explanation and predicate ranking through the MCP server, with the SDK's client."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import SyncClient, connect

from interlatent_mcp.analysis import compute_stats
from interlatent_mcp.capture import record_rollout
from interlatent_mcp.explain.llm import LLMResponse, ScriptedBackend, TokenUsage
from interlatent_mcp.explain.scoring import score_predicate, score_predicate_channels
from interlatent_mcp.server import create_server
from interlatent_mcp.store import Store
from interlatent_mcp.tools.base import ServerContext

LAYER = "act2:post"


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tools") / "demo.sqlite"
    with Store(path) as store:
        run = record_rollout(store, "cartpole-ppo", episodes=2, seed=4, layers=[LAYER])
        compute_stats(store, [run.run_id])
        store.checkpoint()
    return path


@pytest.fixture
def served(demo_store: Path, tmp_path: Path) -> Iterator[tuple[SyncClient, ServerContext]]:
    path = tmp_path / "store.sqlite"
    shutil.copy(demo_store, path)
    context = ServerContext.open(path)
    try:
        with connect(create_server(context)) as client:
            yield client, context
    finally:
        context.close()


def layer_id(context: ServerContext) -> int:
    return context.store.get_layer(1, LAYER).layer_id


def test_score_explanation_stores_predicate_score(served) -> None:
    client, context = served
    written = client.ok("write_explanation", {
        "layer": LAYER, "channel": 5, "text": "cart moving right",
        "predicate": "cart_velocity > 0.1 and action == 1"})
    result = client.ok("score_explanation", {"layer": LAYER, "channel": 5})
    direct = score_predicate(context.store, layer_id(context), 5,
                             "cart_velocity > 0.1 and action == 1")

    assert result["explanation"]["explanation_id"] == written["explanation_id"]
    assert result["predicate"]["auroc"] == pytest.approx(direct.auroc)
    assert result["predicate"]["f1"] == pytest.approx(direct.f1)
    assert result["predicate"]["true_positives"] == direct.true_positives
    assert result["predicate"]["threshold_rule"] == direct.threshold_rule
    assert result["simulation"] is None
    stored = context.store.get_explanation(written["explanation_id"])
    assert stored.scores["predicate"]["auroc"] == pytest.approx(direct.auroc)


def test_score_explanation_errors_guide_the_caller(served) -> None:
    client, _ = served
    missing = client.error("score_explanation", {"layer": LAYER, "channel": 9})
    client.ok("write_explanation", {"layer": LAYER, "channel": 9, "text": "no claim yet"})
    no_predicate = client.error("score_explanation", {"layer": LAYER, "channel": 9})
    other = client.ok("write_explanation", {"layer": LAYER, "channel": 10, "text": "x",
                                            "predicate": "t > 5"})
    mismatch = client.error("score_explanation", {
        "layer": LAYER, "channel": 9, "explanation_id": other["explanation_id"]})

    assert "write_explanation" in missing
    assert "no predicate" in no_predicate
    assert "not channel 9" in mismatch


def test_simulation_uses_server_backend(served) -> None:
    client, context = served
    context.llm = ScriptedBackend([LLMResponse(
        "\n".join(f"{i}: {i % 7}" for i in range(1, 41)), usage=TokenUsage(800, 90))],
        model="claude-scripted")
    client.ok("write_explanation", {"layer": LAYER, "channel": 5, "text": "some idea"})
    result = client.ok("score_explanation", {"layer": LAYER, "channel": 5,
                                             "method": "simulation"})

    assert result["simulation"]["model"] == "claude-scripted"
    assert result["simulation"]["n_steps"] == 40
    assert -1.0 <= result["simulation"]["correlation"] <= 1.0
    assert result["explanation"]["scores"]["simulation"]["input_tokens"] == 800


def test_simulation_without_key_says_so(served, monkeypatch) -> None:
    pytest.importorskip("anthropic")
    client, _ = served
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    client.ok("write_explanation", {"layer": LAYER, "channel": 5, "text": "some idea"})
    message = client.error("score_explanation", {"layer": LAYER, "channel": 5,
                                                 "method": "simulation"})
    assert "ANTHROPIC_API_KEY" in message


def test_predicate_ranking_matches_direct_scores(served) -> None:
    client, context = served
    predicate = "pole_angular_velocity > 0.1"
    ranking = client.ok("find_channels_by_predicate", {"layer": LAYER, "predicate": predicate,
                                                       "limit": 5})
    direct = score_predicate_channels(context.store, layer_id(context), predicate)
    expected = sorted(direct, key=lambda s: -1 if s.auroc is None else s.auroc, reverse=True)

    assert ranking["total"] == 64
    assert ranking["next_offset"] == 5
    assert [c["auroc"] for c in ranking["channels"]] == pytest.approx(
        [s.auroc for s in expected[:5]])
    assert ranking["channels"][0]["channel"] == expected[0].channel


def test_predicate_ranking_rejects_bad_input(served) -> None:
    client, _ = served
    syntax = client.error("find_channels_by_predicate", {"layer": LAYER, "predicate": "pole >"})
    unknown = client.error("find_channels_by_predicate", {"layer": LAYER,
                                                          "predicate": "pole.angle > 0"})
    numeric_f1 = client.error("find_channels_by_predicate", {
        "layer": LAYER, "predicate": "abs(pole_angle)", "order": "f1"})

    assert "column" in syntax
    assert "pole_angle" in syntax  # the list of variables
    assert "attribute access" in unknown
    assert "no F1" in numeric_f1
