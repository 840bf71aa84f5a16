"""The read-only query tool and the store method under it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import SyncClient, connect

from interlatent_mcp.capture import record_rollout
from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.server import create_server
from interlatent_mcp.store import Store
from interlatent_mcp.tools.base import ServerContext

ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SyncClient, Path]]:
    path = tmp_path_factory.mktemp("query") / "store.sqlite"
    with Store(path) as store:
        record_rollout(store, "cartpole-ppo", steps=300, seed=2, chunk_steps=100)
        store.add_note("a note to find", author="test")
    context = ServerContext.open(path)
    try:
        with connect(create_server(context)) as client:
            yield client, path
    finally:
        context.close()


def test_select_returns_rows(served: tuple[SyncClient, Path]) -> None:
    client, _ = served
    result = client.ok("query", {"sql": "SELECT run_id, n_steps, status FROM runs"})
    assert result["columns"] == ["run_id", "n_steps", "status"]
    assert result["rows"] == [[1, 300, "complete"]]
    assert result["truncated"] is False


def test_rows_limited_and_flagged(served: tuple[SyncClient, Path]) -> None:
    client, _ = served
    result = client.ok("query", {"sql": "SELECT chunk FROM activation_chunks ORDER BY chunk",
                                 "max_rows": 5})
    assert len(result["rows"]) == 5
    assert result["truncated"] is True


def test_blobs_shown_as_sizes(served: tuple[SyncClient, Path]) -> None:
    client, _ = served
    result = client.ok("query", {"sql": "SELECT data FROM activation_chunks WHERE chunk = 0 LIMIT 1"})
    assert result["rows"][0][0] == f"<BLOB {100 * 64 * 4} bytes>"


@pytest.mark.parametrize("sql", [
    "DELETE FROM notes",
    "UPDATE runs SET status = 'failed'",
    "INSERT INTO notes (created_at, author, text) VALUES ('now', 'x', 'y')",
    "DROP TABLE notes",
    "ATTACH DATABASE ':memory:' AS other",
    "PRAGMA journal_mode = DELETE",
    "VACUUM",
    "SELECT 1; DELETE FROM notes",
])
def test_writes_rejected_store_unchanged(served: tuple[SyncClient, Path], sql: str) -> None:
    client, path = served
    message = client.error("query", {"sql": sql})
    with Store(path) as store:
        notes = store.list_notes()
        run = store.get_run(1)
    assert "SELECT" in message
    assert [n.text for n in notes] == ["a note to find"]
    assert run.status == "complete"


def test_endless_query_times_out(served: tuple[SyncClient, Path]) -> None:
    client, path = served
    with Store(path) as store, pytest.raises(InvalidArgumentError, match="timed out after 0.2 s"):
        store.query_read_only(ENDLESS, time_limit_s=0.2)
    assert "timed out" in client.error("query", {"sql": ENDLESS})


def test_fts_and_pragma_functions_readable(served: tuple[SyncClient, Path]) -> None:
    client, _ = served
    columns = client.ok("query", {"sql": "SELECT name FROM pragma_table_info('notes')"})
    fts = client.ok("query", {"sql": "SELECT count(*) FROM explanations_fts"})
    assert ["note_id"] in columns["rows"]
    assert fts["rows"] == [[0]]


def test_unknown_table_points_to_schema(served: tuple[SyncClient, Path]) -> None:
    client, _ = served
    message = client.error("query", {"sql": "SELECT * FROM activations"})
    assert "no such table: activations" in message
    assert "interlatent://schema" in message
