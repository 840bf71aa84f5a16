"""The MCP server driven in-process by the SDK's client, in both protocol modes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mcp.shared.exceptions import MCPError
from server_helpers import PNG_SIGNATURE, SyncClient, connect, json_size, run_scripted_agent

from interlatent_mcp.server import create_server
from interlatent_mcp.store import Store
from interlatent_mcp.tools.base import ServerContext

EXPECTED_TOOLS = {
    "list_policies", "describe_policy", "list_envs", "list_runs", "get_run", "record_rollout",
    "compute_stats", "get_channel", "top_activations", "channel_timeline", "find_channels",
    "find_dead", "plot_channel", "write_explanation", "get_explanations", "search_explanations",
    "add_note", "list_notes", "get_job", "cancel_job", "list_jobs", "query",
}


@pytest.fixture(params=["auto", "legacy"])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SyncClient, Path]]:
    """A client connected in-process to a server over an empty store, in each protocol mode."""
    path = tmp_path / "store.sqlite"
    context = ServerContext.open(path)
    try:
        with connect(create_server(context), mode=request.param) as client:
            yield client, path
    finally:
        context.close()


def pearson_by_channel(activations: np.ndarray, variable: np.ndarray) -> np.ndarray:
    """Reference Pearson r of every column with one variable (NaN for constant columns)."""
    centred = activations - activations.mean(axis=0)
    v = variable - variable.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (centred * v[:, None]).sum(axis=0) / np.sqrt(
            (centred**2).sum(axis=0) * (v**2).sum())


def test_tools_listed_with_descriptions(session: tuple[SyncClient, Path]) -> None:
    client, _ = session
    tools = client.run(client.client.list_tools).tools
    names = {tool.name for tool in tools}
    assert EXPECTED_TOOLS <= names
    for tool in tools:
        assert tool.description and len(tool.description) > 80, tool.name
        assert tool.output_schema is not None or tool.name == "plot_channel", tool.name
        assert tool.input_schema["type"] == "object"


def test_scripted_agent_from_empty_store(session: tuple[SyncClient, Path]) -> None:
    client, path = session
    found = run_scripted_agent(client)
    run, channel = found["run"], found["ranking"]["channels"][0]["channel"]

    # The channel the server ranks first is the one a direct computation ranks first.
    with Store(path) as store:
        layer_id = store.run_layer_ids(run["run_id"])["act1:post"]
        activations = store.read_activations(run["run_id"], layer_id).astype(np.float64)
        steps = store.read_step_range(run["run_id"])
        pole_angle = steps.variables[:, run_variables(store, run["run_id"]).index("pole_angle")]
    reference = np.nan_to_num(np.abs(pearson_by_channel(activations, pole_angle)), nan=-1)
    assert channel == int(np.argmax(reference))
    assert found["ranking"]["channels"][0]["r"] == pytest.approx(
        pearson_by_channel(activations, pole_angle)[channel], abs=1e-6)

    card = found["card"]
    assert card["channel"] == channel
    assert card["stats"]["count"] == run["n_steps"]
    assert "pole_angle" in [c["variable"] for c in card["correlations"]]
    assert card["top_moments"][0]["value"] == pytest.approx(activations[:, channel].max(), rel=1e-6)
    assert found["png"].startswith(PNG_SIGNATURE)
    assert found["plot"]["png_bytes"] == len(found["png"])
    assert found["written"]["version"] == 1
    hits = [(e["layer"], e["channel"]) for e in found["found"]["explanations"]]
    assert ("act1:post", channel) in hits


def run_variables(store: Store, run_id: int) -> list[str]:
    return store.get_run(run_id).variables


def test_card_shows_explanation_and_notes(session: tuple[SyncClient, Path]) -> None:
    client, _ = session
    client.ok("record_rollout", {"steps": 600, "wait_seconds": 50})
    client.ok("compute_stats", {"wait_seconds": 50})
    first = client.ok("write_explanation", {"layer": "act2:post", "channel": 3, "text": "first idea"})
    second = client.ok("write_explanation", {"layer": "act2:post", "channel": 3, "text": "better idea"})
    client.ok("add_note", {"text": "check episode ends", "layer": "act2:post", "channel": 3})
    card = client.ok("get_channel", {"layer": "act2:post", "channel": 3})
    history = client.ok("get_explanations", {"layer": "act2:post", "channel": 3, "latest_only": False})

    assert (first["version"], second["version"]) == (1, 2)
    assert card["explanation"]["text"] == "better idea"
    assert card["explanation_versions"] == 2
    assert [n["text"] for n in card["notes"]] == ["check episode ends"]
    assert [e["text"] for e in history["explanations"]] == ["better idea", "first idea"]


def test_unknown_layer_lists_valid_layers(session: tuple[SyncClient, Path]) -> None:
    client, _ = session
    empty = client.error("get_channel", {"layer": "act1:post", "channel": 0})
    client.ok("record_rollout", {"steps": 300, "wait_seconds": 50})
    message = client.error("get_channel", {"layer": "act9:post", "channel": 0})

    assert "record_rollout" in empty
    assert "act9:post" in message
    for layer in ("act1:post", "act2:pre", "logits:post"):
        assert layer in message


def test_unknown_run_says_how_to_list_runs(session: tuple[SyncClient, Path]) -> None:
    client, _ = session
    for tool, arguments in (("get_run", {"run_id": 99}),
                            ("compute_stats", {"run_ids": [99], "wait_seconds": 10}),
                            ("channel_timeline", {"layer": "x", "channel": 0, "run_id": 99})):
        message = client.error(tool, arguments)
        assert "list_runs" in message or "not found" in message, (tool, message)
    assert "99" in client.error("get_run", {"run_id": 99})
    assert "list_runs" in client.error("get_run", {"run_id": 99})


def test_channel_out_of_range_names_width(session: tuple[SyncClient, Path]) -> None:
    client, _ = session
    client.ok("record_rollout", {"steps": 200, "wait_seconds": 50})
    message = client.error("channel_timeline", {"layer": "act1:post", "channel": 64})
    assert "64 channels" in message
    assert "0 to 63" in message


def test_timeline_pages_join_step_context(session: tuple[SyncClient, Path]) -> None:
    client, path = session
    run = client.ok("record_rollout", {"steps": 700, "wait_seconds": 50})["run"]
    first = client.ok("channel_timeline", {"layer": "act1:post", "channel": 7, "limit": 300})
    second = client.ok("channel_timeline", {"layer": "act1:post", "channel": 7, "limit": 300,
                                             "offset": first["next_offset"],
                                             "variables": ["pole_angle", "action"]})
    last = client.ok("channel_timeline", {"layer": "act1:post", "channel": 7, "limit": 300,
                                          "offset": 600})

    with Store(path) as store:
        layer_id = store.run_layer_ids(run["run_id"])["act1:post"]
        expected = store.read_activations(run["run_id"], layer_id)[:, 7]
        context = store.read_step_range(run["run_id"])
    values = [s["value"] for s in first["steps"] + second["steps"] + last["steps"]]
    assert first["next_offset"] == 300
    assert last["next_offset"] is None
    assert len(values) == 700
    assert np.allclose(values, expected)
    assert [s["episode"] for s in second["steps"]] == context.episode[300:600].tolist()
    assert set(second["steps"][0]["variables"]) == {"pole_angle", "action"}


def test_find_dead_matches_card_flags(session: tuple[SyncClient, Path]) -> None:
    client, _ = session
    client.ok("record_rollout", {"steps": 1000, "wait_seconds": 50})
    analysis = client.ok("compute_stats", {"wait_seconds": 50})["analysis"]
    dead = client.ok("find_dead", {"layer": "act1:post", "limit": 200})
    n_dead = {layer["layer"]: layer["n_dead"] for layer in analysis["layers"]}["act1:post"]

    assert dead["total"] == n_dead == len(dead["channels"])
    for channel in [c["channel"] for c in dead["channels"]][:3]:
        assert client.ok("get_channel", {"layer": "act1:post", "channel": channel})["stats"]["dead"]


def test_results_stay_small(session: tuple[SyncClient, Path]) -> None:
    client, _ = session
    client.ok("record_rollout", {"episodes": 3, "wait_seconds": 50})
    client.ok("compute_stats", {"wait_seconds": 50})
    calls = {
        "get_channel": {"layer": "act1:post", "channel": 1},
        "top_activations": {"layer": "act1:post", "channel": 1, "limit": 50},
        "channel_timeline": {"layer": "act1:post", "channel": 1, "limit": 1000},
        "plot_channel": {"layer": "act1:post", "channel": 1, "steps": 5000},
        "list_envs": {"limit": 200},
        "find_channels": {"layer": "act1:post", "variable": "action", "limit": 200},
    }
    sizes = {name: json_size(client.call(name, arguments)) for name, arguments in calls.items()}
    assert sizes["get_channel"] < 16_000
    assert max(sizes.values()) < 1_000_000, sizes


def test_resources_and_prompts(session: tuple[SyncClient, Path]) -> None:
    client, _ = session
    client.ok("record_rollout", {"steps": 500, "wait_seconds": 50})
    client.ok("compute_stats", {"wait_seconds": 50})
    client.ok("write_explanation", {"layer": "act1:post", "channel": 2, "text": "tracks velocity"})
    templates = client.run(client.client.list_resource_templates).resource_templates
    schema = client.run(client.client.read_resource, "interlatent://schema").contents[0].text
    runs = client.run(client.client.read_resource, "interlatent://runs").contents[0].text
    table = client.run(client.client.read_resource,
                       "interlatent://policies/cartpole-ppo/layers/act1:post/channels").contents[0].text
    card = client.run(client.client.read_resource,
                      "interlatent://policies/1/layers/act1:post/channels/2").contents[0].text
    prompts = {p.name for p in client.run(client.client.list_prompts).prompts}
    prompt = client.run(client.client.get_prompt, "explain_channel",
                        {"layer": "act1:post", "channel": "2"})

    assert len(templates) == 2
    assert "CREATE TABLE explanations" in schema
    assert "| 1 | cartpole-ppo | CartPole-v1 | complete | 500 |" in runs
    assert table.count("\n| ") == 64 + 1
    assert "tracks velocity" in table
    assert "# act1:post channel 2 (cartpole-ppo)" in card
    assert "tracks velocity" in card
    assert prompts == {"investigate_layer", "explain_channel", "audit_explanations"}
    assert "get_channel(layer='act1:post', channel=2)" in prompt.messages[0].content.text


def test_resource_errors_carry_message(session: tuple[SyncClient, Path]) -> None:
    client, _ = session
    client.ok("record_rollout", {"steps": 200, "wait_seconds": 50})
    with pytest.raises(MCPError) as unknown:
        client.run(client.client.read_resource, "interlatent://policies/1/layers/nope/channels")
    with pytest.raises(MCPError) as out_of_range:
        client.run(client.client.read_resource,
                   "interlatent://policies/1/layers/act1:post/channels/99")
    assert "known layers" in str(unknown.value)
    assert "out of range" in str(out_of_range.value)
