"""Every tool called with random arguments, valid or not, either succeeds with a structured
result or fails as a tool error with a message: never a crash ("Error executing tool X" alone),
a protocol error, or a result over 1 MB."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError
from server_helpers import SyncClient, connect, json_size, result_text

from interlatent_mcp.analysis import compute_stats
from interlatent_mcp.capture import record_rollout
from interlatent_mcp.server import TOOL_MODULES, create_server
from interlatent_mcp.store import Store
from interlatent_mcp.tools.base import ServerContext

MAX_RESULT_BYTES = 1_000_000

CORE_TOOLS = [
    "list_policies", "describe_policy", "list_envs", "list_runs", "get_run", "record_rollout",
    "compute_stats", "get_channel", "top_activations", "channel_timeline", "find_channels",
    "find_dead", "plot_channel", "write_explanation", "get_explanations", "search_explanations",
    "add_note", "list_notes", "get_job", "cancel_job", "list_jobs", "query",
]


def registered_tool_names() -> list[str]:
    """Every tool of every module the server registers, so a new tools module is tested too."""
    modules = [importlib.import_module(name) for name in TOOL_MODULES]
    return sorted(name for module in modules for name in module.tools.tool_names())


TOOL_NAMES = registered_tool_names()

VALID_LAYERS = ["act1:post", "act2:pre", "act1:pre", "act2:post"]
VALID_VARIABLES = ["pole_angle", "action", "reward", "t"]
# Filled by the client fixture with the id of a job that exists in the store.
KNOWN_JOB_IDS: list[str] = []

# Arguments of the right type and range for the fixture's store (one policy, run 1, analysis 1).
VALID: dict[str, st.SearchStrategy[Any]] = {
    "layer": st.sampled_from(VALID_LAYERS),
    "layers": st.none() | st.lists(st.sampled_from(VALID_LAYERS), min_size=1, max_size=2),
    "channel": st.integers(0, 63),
    "policy": st.sampled_from([None, "cartpole-ppo", "1", 1]),
    "analysis_id": st.sampled_from([None, 1]),
    "run_id": st.sampled_from([None, 1]),
    "run_ids": st.sampled_from([None, [1]]),
    "variable": st.sampled_from(VALID_VARIABLES),
    "variables": st.none() | st.lists(st.sampled_from(VALID_VARIABLES), min_size=1, max_size=3),
    "offset": st.integers(0, 900),
    "limit": st.integers(1, 50),
    "steps": st.integers(10, 600),
    "start": st.integers(0, 700),
    "episodes": st.none() | st.integers(1, 2),
    "wait_seconds": st.floats(0, 3),
    "seed": st.integers(0, 2**31 - 1),
    "top_k": st.integers(1, 40),
    "max_rows": st.integers(1, 200),
    "explanation_id": st.sampled_from([None, 1]),
    "sql": st.sampled_from(["SELECT 1", "SELECT * FROM runs", "SELECT * FROM correlations",
                            "SELECT * FROM activation_chunks",
                            "SELECT text FROM explanations_fts WHERE explanations_fts MATCH 'pole'",
                            "SELECT * FROM pragma_table_info('runs')"]),
    "text": st.text(min_size=1, max_size=60).filter(str.strip),
    "query": st.sampled_from(["pole angle", "pole*", "tracks", "angle OR velocity", "\"unclosed",
                              "a AND", "NOT", "pole-angle", "col:x"])
    | st.text(min_size=1, max_size=30),
    "predicate": st.none() | st.sampled_from(["pole_angle > 0", "abs(pole_angle)",
                                              "action == 1 and t < 100", "nope > 1"]),
    "job_id": st.deferred(lambda: st.sampled_from(KNOWN_JOB_IDS)),
    "status": st.sampled_from([None, "running", "complete", "interrupted", "failed"]),
    "env_id": st.sampled_from([None, "CartPole-v1", "MountainCar-v0"]),
    "prefix": st.sampled_from([None, "CartPole", "ALE/", "Zzz"]),
    "tags": st.lists(st.text(min_size=1, max_size=10), max_size=3),
    "latest_only": st.booleans(),
    "max_frac_active": st.none() | st.floats(0, 1),
    "episodes_limit": st.integers(1, 50),
    "author": st.text(min_size=1, max_size=10),
    "input_layer": st.sampled_from(VALID_LAYERS),
    "output_layer": st.none() | st.sampled_from(VALID_LAYERS),
    "n_latents": st.none() | st.integers(8, 128),
    "k": st.integers(1, 8),
    "skip_connection": st.booleans(),
    "max_epochs": st.integers(1, 3),
    "name": st.none() | st.text(alphabet="ab-_.09", min_size=1, max_size=20),
    "transcoder": st.sampled_from([1, "act2-transcoder-topk", "missing"]),
    "splice_episodes": st.integers(0, 2),
}
# Arguments of the right type that name nothing in the store or lie outside the valid range.
INVALID: dict[str, st.SearchStrategy[Any]] = {
    "layer": st.sampled_from(["fc1:post", "nope", "", "x" * 300]),
    "layers": st.lists(st.sampled_from(["nope", "", "act1"]), min_size=1, max_size=2),
    "channel": st.sampled_from([-1, 64, 10**8]),
    "policy": st.sampled_from([2, "ghost", "", "x.zip", "/", "0"]),
    "analysis_id": st.sampled_from([0, -1, 2, 99]),
    "run_id": st.sampled_from([0, -1, 2, 99]),
    "run_ids": st.lists(st.integers(-1, 4), max_size=3),
    "variable": st.sampled_from(["nope", ""]),
    "variables": st.lists(st.sampled_from(["nope", ""]), min_size=1, max_size=2),
    "offset": st.sampled_from([-1, 10**12]),
    "limit": st.sampled_from([0, -1, 5000]),
    "steps": st.sampled_from([-1, 0, 10**9]),
    "start": st.sampled_from([-1, 10**6]),
    "episodes": st.sampled_from([0, -1, 10**6]),
    "wait_seconds": st.sampled_from([-1.0, 51.0, float("nan"), float("inf")]),
    "seed": st.sampled_from([-1, 2**40]),
    "top_k": st.sampled_from([0, 1001]),
    "max_rows": st.sampled_from([0, 10**6]),
    "explanation_id": st.sampled_from([0, -1, 99]),
    "sql": st.sampled_from(["DELETE FROM runs", "", "SELECT * FROM notes; DROP TABLE notes",
                            "PRAGMA journal_mode=DELETE", "SELECT * FROM nope",
                            "ATTACH 'x.db' AS x", "VACUUM"]) | st.text(max_size=40),
    "text": st.sampled_from(["", "   ", "x" * 10_000]),
    "query": st.sampled_from(["", "   "]),
    "predicate": st.sampled_from(["__import__('os')", "pole_angle >", "x" * 3000]) | st.text(max_size=20),
    "job_id": st.sampled_from(["", "0" * 12, "x" * 100]) | st.text(max_size=20),
    "status": st.just("bogus"),
    "env_id": st.sampled_from(["Nope-v0", "", "MountainCar-v0"]),
    "prefix": st.just("x" * 300),
    "tags": st.lists(st.text(max_size=200), min_size=21, max_size=22),
    "latest_only": st.just("sometimes"),
    "max_frac_active": st.sampled_from([-0.1, 1.5, float("nan")]),
    "episodes_limit": st.sampled_from([0, 51]),
    "author": st.sampled_from(["", "x" * 200]),
    "input_layer": st.sampled_from(["", "nope", "x" * 300]),
    "output_layer": st.sampled_from(["", "nope:post", "x" * 300]),
    "n_latents": st.sampled_from([0, -1, 10**6]),
    "k": st.sampled_from([0, -1, 2000]),
    "skip_connection": st.just("sometimes"),
    "max_epochs": st.sampled_from([0, 10**5]),
    "name": st.sampled_from(["", "has space", "x" * 200, "/etc"]),
    "transcoder": st.sampled_from([0, -1, "", "ghost"]),
    "splice_episodes": st.sampled_from([-1, 101]),
}
ANY_JSON: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
    st.lists(st.integers(-3, 3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncClient]:
    """A server over a store with one analysed CartPole run, one explanation and one job."""
    path: Path = tmp_path_factory.mktemp("properties") / "store.sqlite"
    with Store(path) as store:
        run = record_rollout(store, "cartpole-ppo", steps=800, seed=1, chunk_steps=256)
        compute_stats(store, [run.run_id])
    context = ServerContext.open(path)
    try:
        with connect(create_server(context)) as connected:
            connected.ok("write_explanation", {"layer": "act1:post", "channel": 1,
                                               "text": "tracks the pole angle"})
            job = connected.ok("compute_stats", {"run_ids": [1], "wait_seconds": 30})["job"]
            KNOWN_JOB_IDS.append(job["job_id"])
            yield connected
    finally:
        context.close()


@pytest.fixture(scope="module")
def tool_schemas(client: SyncClient) -> dict[str, dict[str, Any]]:
    tools = client.run(client.client.list_tools).tools
    return {tool.name: tool.input_schema for tool in tools}


def choices(schema: dict[str, Any]) -> list[Any] | None:
    """Return the allowed values of an argument declared as a Literal (an enum), else None."""
    options = [schema, *schema.get("anyOf", [])]
    values = [value for option in options for value in option.get("enum", [])]
    if not values:
        return None
    return values + ([None] if any(o.get("type") == "null" for o in options) else [])


JSON_TYPES = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
              list: "array", dict: "object"}


def fits_type(value: Any, argument: dict[str, Any]) -> bool:
    """Whether `value` has one of the JSON types the argument's schema allows at its top level."""
    declared = {option.get("type") for option in [argument, *argument.get("anyOf", [])]} - {None}
    kind = JSON_TYPES.get(type(value))
    return not declared or kind in declared or (kind == "integer" and "number" in declared)


def strategies(schema: dict[str, Any], table: dict[str, st.SearchStrategy[Any]]) -> dict[str, st.SearchStrategy[Any]]:
    """Map each argument to its strategy: Literal choices from the schema, else `table` by name.

    Valid values are kept only when their JSON type fits the argument (a name may be a string
    for one tool and an integer or nullable for another).
    """
    drawn = {}
    for name, argument in schema.get("properties", {}).items():
        allowed = choices(argument)
        if allowed is None and table is VALID:
            drawn[name] = table.get(name, ANY_JSON).filter(
                lambda value, argument=argument: fits_type(value, argument))
        elif allowed is None:
            drawn[name] = table.get(name, ANY_JSON)
        elif table is VALID:
            drawn[name] = st.sampled_from(allowed)
        else:
            drawn[name] = st.just("not-one-of-the-choices")
    return drawn


def valid_arguments(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Every required argument and some optional ones, each drawn from the valid values."""
    valid = strategies(schema, VALID)
    required = set(schema.get("required", []))
    return st.fixed_dictionaries(
        {name: value for name, value in valid.items() if name in required},
        optional={name: value for name, value in valid.items() if name not in required},
    )


@st.composite
def invalid_arguments(draw: st.DrawFn, schema: dict[str, Any]) -> dict[str, Any]:
    """Valid arguments with one or more replaced by an invalid value, a wrong type or nothing."""
    arguments = draw(valid_arguments(schema))
    invalid = strategies(schema, INVALID)
    if not invalid:
        return {"unexpected_argument": draw(ANY_JSON)}
    for name in draw(st.lists(st.sampled_from(sorted(invalid)), min_size=1, max_size=3, unique=True)):
        how = draw(st.sampled_from(["invalid", "wrong type", "missing"]))
        if how == "missing":
            arguments.pop(name, None)
        else:
            arguments[name] = draw(invalid[name] if how == "invalid" else ANY_JSON)
    return arguments


def check_outcome(client: SyncClient, name: str, arguments: dict[str, Any]) -> bool:
    """Call the tool, check the outcome is a result or a tool error; return whether it failed."""
    result = client.call(name, arguments)
    text = result_text(result)
    if result.is_error:
        assert text.strip() != f"Error executing tool {name}", f"{name} crashed on {arguments!r}"
        assert len(text) > len(f"Error executing tool {name}: ") + 10, text
    else:
        assert result.structured_content is not None, f"{name} returned no structured content"
        job = result.structured_content.get("job")
        if job and job["status"] in ("queued", "running"):
            client.ok("cancel_job", {"job_id": job["job_id"]})
    assert json_size(result) < MAX_RESULT_BYTES
    return result.is_error


def test_every_tool_covered(tool_schemas: dict[str, dict[str, Any]]) -> None:
    """Every listed tool is tested, with strategies for each of its argument names."""
    assert sorted(tool_schemas) == TOOL_NAMES
    assert set(CORE_TOOLS) <= set(TOOL_NAMES)
    for name, schema in tool_schemas.items():
        named = {n for n, argument in schema.get("properties", {}).items() if choices(argument) is None}
        missing = named - (set(VALID) & set(INVALID))
        assert not missing, f"add VALID and INVALID strategies for {name}'s arguments {missing}"


@pytest.mark.parametrize("name", TOOL_NAMES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tool_valid_arguments(client: SyncClient, tool_schemas: dict[str, dict[str, Any]],
                              name: str, data: st.DataObject) -> None:
    check_outcome(client, name, data.draw(valid_arguments(tool_schemas[name]), label="arguments"))


@pytest.mark.parametrize("name", TOOL_NAMES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tool_invalid_arguments(client: SyncClient, tool_schemas: dict[str, dict[str, Any]],
                                name: str, data: st.DataObject) -> None:
    check_outcome(client, name, data.draw(invalid_arguments(tool_schemas[name]), label="arguments"))


def test_read_tools_succeed_on_valid_arguments(client: SyncClient) -> None:
    """Valid arguments reach the tools' own code: the read tools answer them without error."""
    calls = {
        "get_channel": {"layer": "act2:pre", "channel": 63, "policy": "1", "analysis_id": 1},
        "top_activations": {"layer": "act1:pre", "channel": 0, "offset": 30, "limit": 50},
        "channel_timeline": {"layer": "act2:post", "channel": 5, "run_id": 1, "offset": 799,
                             "limit": 50},
        "find_channels": {"layer": "act1:post", "variable": "t", "order": "negative"},
        "find_dead": {"layer": "act2:pre", "max_frac_active": 0.5},
        "plot_channel": {"layer": "act1:post", "channel": 9, "run_id": 1, "start": 700,
                         "steps": 5000},
        "search_explanations": {"query": "\"unclosed"},
        "query": {"sql": "SELECT text FROM explanations_fts WHERE explanations_fts MATCH 'pole'"},
    }
    for name, arguments in calls.items():
        assert not check_outcome(client, name, arguments), name


@settings(max_examples=30, deadline=None)
@given(policy=st.sampled_from(["1", "cartpole-ppo", "ghost", "%00", ".."]) | st.text(max_size=8),
       layer=st.sampled_from(VALID_LAYERS + ["nope"]) | st.text(max_size=8),
       channel=st.sampled_from(["0", "63", "64", "-1", "x"]) | st.text(max_size=4))
def test_resource_fails_with_message(client: SyncClient, policy: str, layer: str, channel: str) -> None:
    base = f"interlatent://policies/{quote(policy, safe='')}/layers/{quote(layer, safe=':')}/channels"
    for uri in (base, f"{base}/{quote(channel, safe='')}"):
        try:
            contents = client.run(client.client.read_resource, uri).contents
        except MCPError as e:
            assert not str(e).startswith("Error reading resource"), f"{uri} crashed: {e}"
            assert len(str(e)) > 10
        else:
            assert contents[0].text.startswith("# ")


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_unknown_argument_rejected(client: SyncClient, tool_schemas: dict[str, dict[str, Any]],
                                   name: str) -> None:
    """A misspelt argument is a tool error naming it, never silently ignored."""
    assert tool_schemas[name].get("additionalProperties") is False, name
    result = client.call(name, {"no_such_argument": 1})
    assert result.is_error, name
    assert "no_such_argument" in result_text(result), name
