"""The Store: one SQLite file holding everything interlatent records and derives."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from interlatent_mcp.store.analyses import AnalysesMixin
from interlatent_mcp.store.connection import Connections, default_store_path, initialise
from interlatent_mcp.store.investigation import InvestigationMixin
from interlatent_mcp.store.query import QueryMixin
from interlatent_mcp.store.runs import RunsMixin
from interlatent_mcp.store.schema import SCHEMA_VERSION
from interlatent_mcp.store.transcoders import TranscodersMixin

logger = logging.getLogger(__name__)


class Store(RunsMixin, AnalysesMixin, InvestigationMixin, QueryMixin, TranscodersMixin):
    """The latent store. Thread-safe: each thread uses its own SQLite connection.

    Open it with `Store(path)` (None means `default_store_path()`); the file and its parent
    directory are created when missing, and an older schema is migrated forward.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        read_only: bool = False,
        _target_version: int = SCHEMA_VERSION,
    ) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connections = Connections(self.path, read_only=read_only)
        self.schema_version = initialise(self.connections, target_version=_target_version)
        logger.debug("opened store %s (schema version %d)", self.path, self.schema_version)

    def close(self) -> None:
        self.connections.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def integrity_check(self) -> str:
        """Run SQLite's integrity_check and return its verdict ('ok' when the file is sound)."""
        rows = self.connections.get().execute("PRAGMA integrity_check").fetchall()
        return "; ".join(row[0] for row in rows)

    def checkpoint(self) -> None:
        """Fold the WAL file back into the database and truncate it."""
        self.connections.get().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"
