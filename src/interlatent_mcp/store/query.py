"""Read-only SQL over the store, with row and time limits, for questions no other method covers."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.store.connection import BUSY_TIMEOUT_MS, Connections

MAX_QUERY_ROWS = 1000
MAX_QUERY_SECONDS = 30.0
# A text cell longer than this is cut, so one wide column cannot fill a result.
MAX_CELL_CHARS = 2000
# The progress handler runs every this many SQLite virtual-machine instructions.
_PROGRESS_INSTRUCTIONS = 10_000

# Authorizer actions a plain SELECT needs. Every other action (writes, ATTACH, PRAGMA, DDL) is
# denied, except the few in _authorize_read.
_ALLOWED_ACTIONS = frozenset({
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
})

# Introspection pragmas, usable as `SELECT * FROM pragma_table_info('runs')`. None of them writes.
_READ_ONLY_PRAGMAS = frozenset({
    "data_version", "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
    "foreign_key_list",
})


@dataclass(frozen=True)
class QueryResult:
    """The first rows of a read-only query; `truncated` is set when more rows were left unread."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    elapsed_s: float


@dataclass(frozen=True)
class SchemaObject:
    """A table, index, view or trigger of the store as `sqlite_master` describes it."""

    kind: str
    name: str
    table: str
    sql: str | None


class QueryMixin:
    """Store methods for ad-hoc read-only queries and the schema text."""

    connections: Connections
    path: Path

    def query_read_only(
        self, sql: str, *, max_rows: int = 100, time_limit_s: float = 5.0
    ) -> QueryResult:
        """Run one SELECT (or WITH ... SELECT) on a separate read-only connection.

        The connection opens the file with `mode=ro`, sets `PRAGMA query_only` and an authorizer
        that denies everything but reading, so no statement can change the store. The query is
        stopped after `time_limit_s` seconds. At most `max_rows` rows are returned, with BLOBs
        replaced by their size and text cut to MAX_CELL_CHARS characters.
        """
        _check_query_limits(sql, max_rows, time_limit_s)
        conn = self._open_read_only()
        started = time.monotonic()
        deadline = started + time_limit_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_INSTRUCTIONS)
        try:
            cursor = conn.execute(sql)
            fetched = cursor.fetchmany(max_rows + 1)
            columns = [d[0] for d in cursor.description or ()]
        except sqlite3.Error as e:
            raise _query_error(e, sql, time_limit_s) from e
        finally:
            conn.close()
        rows = [[_render_cell(value) for value in row] for row in fetched[:max_rows]]
        return QueryResult(columns, rows, len(fetched) > max_rows, time.monotonic() - started)

    def describe_schema(self) -> list[SchemaObject]:
        """Return every table, index, view and trigger, in creation order."""
        rows = self.connections.get().execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
            " WHERE name NOT LIKE 'sqlite_%' ORDER BY rowid"
        )
        return [SchemaObject(row[0], row[1], row[2], row[3]) for row in rows]

    def _open_read_only(self) -> sqlite3.Connection:
        uri = Path(self.path).resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_authorize_read)
        return conn


def _authorize_read(action: int, first: str | None, *_rest: Any) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    # Opening an FTS5 table (explanations_fts) requests an sqlite_master "update" and the
    # data_version pragma internally. The connection is read-only and query_only, so neither
    # can write anything.
    if action == sqlite3.SQLITE_UPDATE and first == "sqlite_master":
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and first in _READ_ONLY_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _check_query_limits(sql: str, max_rows: int, time_limit_s: float) -> None:
    if not sql.strip():
        raise InvalidArgumentError("the query is empty; give one SELECT statement")
    if not 1 <= max_rows <= MAX_QUERY_ROWS:
        raise InvalidArgumentError(f"max_rows must be between 1 and {MAX_QUERY_ROWS}, got {max_rows}")
    if not 0 < time_limit_s <= MAX_QUERY_SECONDS:
        raise InvalidArgumentError(
            f"time_limit_s must be above 0 and at most {MAX_QUERY_SECONDS}, got {time_limit_s}"
        )


def _query_error(error: sqlite3.Error, sql: str, time_limit_s: float) -> InvalidArgumentError:
    text = str(error)
    if "interrupted" in text:
        return InvalidArgumentError(
            f"the query timed out after {time_limit_s} s and was stopped; narrow it with WHERE "
            f"or LIMIT"
        )
    if "one statement at a time" in text:
        return InvalidArgumentError(
            "the query must be a single SELECT statement; remove the statements after the first ';'"
        )
    if any(word in text for word in ("not authorized", "authorization denied", "readonly")):
        return InvalidArgumentError(
            f"only a single SELECT statement can run here, so {sql.strip()[:80]!r} was rejected "
            f"({text}); use the other tools to change the store"
        )
    return InvalidArgumentError(
        f"the query failed: {text}; the schema is in the resource interlatent://schema"
    )


def _render_cell(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        return f"<BLOB {len(value)} bytes>"
    if isinstance(value, str) and len(value) > MAX_CELL_CHARS:
        return value[:MAX_CELL_CHARS] + f"... ({len(value)} characters)"
    return value
