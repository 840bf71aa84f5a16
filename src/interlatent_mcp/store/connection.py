"""Opening the SQLite file: pragmas, per-thread connections, transactions and migrations."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from interlatent_mcp.errors import StoreError, StoreVersionError
from interlatent_mcp.store.schema import MIGRATIONS, SCHEMA_VERSION

logger = logging.getLogger(__name__)

STORE_ENV_VAR = "INTERLATENT_STORE"
BUSY_TIMEOUT_MS = 5000
# 64 KiB pages roughly double BLOB write throughput over the 4 KiB default; it only takes
# effect before the first table is created.
PAGE_SIZE = 65536
# Past this size the WAL file is truncated after a checkpoint, so constant readers cannot let it grow.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


def default_store_path() -> Path:
    """Return the store path from $INTERLATENT_STORE, else the per-user data directory."""
    explicit = os.environ.get(STORE_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("interlatent", appauthor=False)) / "store.sqlite"


def utc_now() -> str:
    """Return the current time as an ISO 8601 string in UTC, to the millisecond."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Connections:
    """One SQLite connection per thread on one file, with read and write transactions.

    SQLite connections must not be shared across threads while a transaction is open, and the MCP
    server runs tools on worker threads, so each thread gets its own connection. Writes take
    `BEGIN IMMEDIATE`: a deferred transaction that reads and then writes cannot wait on the busy
    timeout and fails with "database is locked" under a concurrent writer.
    """

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def get(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it on first use."""
        if self._closed:
            raise StoreError(f"store {self.path} is closed; open it again with Store(path)")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            uri = f"file:{self.path}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        if not self.read_only:
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        return conn

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one write transaction (BEGIN IMMEDIATE); roll back on any exception.

        Nested calls on the same thread join the outer transaction.
        """
        conn = self.get()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Run several SELECTs on one consistent snapshot (a read transaction)."""
        conn = self.get()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection opened by any thread."""
        with self._lock:
            self._closed = True
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    # A connection created in another thread may already be gone with it.
                    logger.debug("connection already closed")
            self._all.clear()


def initialise(connections: Connections, *, target_version: int = SCHEMA_VERSION) -> int:
    """Set file-level pragmas and apply missing migrations up to `target_version`.

    Returns the schema version the file has afterwards. Raises StoreVersionError when the file
    is newer than this code.
    """
    conn = connections.get()
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"store {connections.path} has schema version {version}, but this interlatent "
            f"understands versions up to {SCHEMA_VERSION}; upgrade interlatent "
            f"(pip install -U interlatent-mcp) or open a different store"
        )
    if connections.read_only:
        if version < SCHEMA_VERSION:
            raise StoreVersionError(
                f"store {connections.path} has schema version {version} and needs migrating to "
                f"{SCHEMA_VERSION}; open it once without read_only to migrate it"
            )
        return version
    if version == 0:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        logger.warning("store %s could not switch to WAL (journal_mode=%s)", connections.path, mode)
    for number in range(version, target_version):
        logger.info("migrating store %s to schema version %d", connections.path, number + 1)
        with connections.atomic() as tx:
            current = tx.execute("PRAGMA user_version").fetchone()[0]
            if current > number:
                # Another process migrated it while we waited for the write lock.
                continue
            for statement in _split_statements(MIGRATIONS[number]):
                tx.execute(statement)
            tx.execute(f"PRAGMA user_version = {number + 1}")
    return max(version, target_version)


def _split_statements(script: str) -> list[str]:
    """Split a migration script into statements, keeping trigger bodies whole."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise StoreError(f"incomplete SQL statement in migration: {buffer.strip()[:80]}")
    return statements
