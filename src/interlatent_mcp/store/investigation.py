"""The investigation record: jobs, notes and versioned explanations."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from interlatent_mcp.errors import InvalidArgumentError, NotFoundError
from interlatent_mcp.store.connection import Connections, utc_now

JOB_STATUSES = ("queued", "running", "complete", "failed", "cancelled", "interrupted")
FINISHED_JOB_STATUSES = ("complete", "failed", "cancelled", "interrupted")


@dataclass(frozen=True)
class JobRecord:
    """A long-running piece of work (a rollout, an analysis, a training) and its outcome."""

    job_id: str
    kind: str
    params: dict[str, Any]
    status: str
    progress: float
    total: float | None
    message: str | None
    result: Any
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None


@dataclass(frozen=True)
class NoteRecord:
    """A journal entry, optionally attached to a layer's channel or a run."""

    note_id: int
    created_at: str
    author: str
    text: str
    layer_id: int | None
    channel: int | None
    run_id: int | None
    tags: list[str]


@dataclass(frozen=True)
class ExplanationRecord:
    """One version of an explanation of a channel; versions are append-only."""

    explanation_id: int
    layer_id: int
    channel: int
    version: int
    text: str
    predicate: str | None
    author: str
    method: str
    evidence: dict[str, Any]
    scores: dict[str, Any]
    created_at: str


def _job_from_row(row: Any) -> JobRecord:
    values = dict(row)
    values["params"] = json.loads(values["params"])
    values["result"] = None if values["result"] is None else json.loads(values["result"])
    return JobRecord(**values)


def _explanation_from_row(row: Any) -> ExplanationRecord:
    values = dict(row)
    values["evidence"] = json.loads(values["evidence"])
    values["scores"] = json.loads(values["scores"])
    return ExplanationRecord(**values)


class InvestigationMixin:
    """Store methods for jobs, notes and explanations."""

    connections: Connections

    # Jobs

    def add_job(self, job_id: str, kind: str, params: dict[str, Any]) -> JobRecord:
        with self.connections.atomic() as tx:
            tx.execute(
                "INSERT INTO jobs (job_id, kind, params, status, created_at)"
                " VALUES (?, ?, ?, 'queued', ?)",
                (job_id, kind, json.dumps(params, default=str), utc_now()),
            )
        return self.get_job(job_id)

    def update_job(
        self,
        job_id: str,
        *,
        status: str | None = None,
        progress: float | None = None,
        total: float | None = None,
        message: str | None = None,
        result: Any = None,
        error: str | None = None,
    ) -> None:
        """Update the given fields of a job; start and finish times follow the status."""
        if status is not None and status not in JOB_STATUSES:
            raise InvalidArgumentError(f"job status {status!r} is not one of {JOB_STATUSES}")
        sets, params = [], []
        for column, value in (("status", status), ("progress", progress), ("total", total),
                              ("message", message), ("error", error)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        if result is not None:
            sets.append("result = ?")
            params.append(json.dumps(result, default=str))
        if status == "running":
            sets.append("started_at = coalesce(started_at, ?)")
            params.append(utc_now())
        if status in FINISHED_JOB_STATUSES:
            sets.append("finished_at = ?")
            params.append(utc_now())
        if not sets:
            return
        with self.connections.atomic() as tx:
            tx.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ?", (*params, job_id))

    def get_job(self, job_id: str) -> JobRecord:
        row = self.connections.get().execute(
            "SELECT * FROM jobs WHERE job_id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"job {job_id!r} is not in the store; list recent jobs with list_jobs"
            )
        return _job_from_row(row)

    def list_jobs(self, *, status: str | None = None, offset: int = 0,
                  limit: int = 20) -> list[JobRecord]:
        sql = "SELECT * FROM jobs"
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        rows = self.connections.get().execute(
            sql + " ORDER BY created_at DESC, job_id LIMIT ? OFFSET ?", (*params, limit, offset)
        )
        return [_job_from_row(row) for row in rows]

    def mark_unfinished_jobs_interrupted(self) -> list[str]:
        """Mark jobs left queued or running by a stopped process as 'interrupted'."""
        with self.connections.atomic() as tx:
            ids = [r[0] for r in tx.execute(
                "SELECT job_id FROM jobs WHERE status IN ('queued', 'running')")]
            tx.execute(
                "UPDATE jobs SET status = 'interrupted', finished_at = ?,"
                " error = coalesce(error, 'the server stopped while the job was running')"
                " WHERE status IN ('queued', 'running')",
                (utc_now(),),
            )
        return ids

    # Notes

    def add_note(self, text: str, *, author: str, layer_id: int | None = None,
                 channel: int | None = None, run_id: int | None = None,
                 tags: Sequence[str] = ()) -> NoteRecord:
        if not text.strip():
            raise InvalidArgumentError("a note needs non-empty text")
        with self.connections.atomic() as tx:
            note_id = tx.execute(
                "INSERT INTO notes (created_at, author, text, layer_id, channel, run_id, tags)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (utc_now(), author, text, layer_id, channel, run_id, json.dumps(list(tags))),
            ).lastrowid
        return self.get_note(note_id)

    def get_note(self, note_id: int) -> NoteRecord:
        row = self.connections.get().execute(
            "SELECT * FROM notes WHERE note_id = ?", (note_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"note {note_id} is not in the store")
        values = dict(row)
        values["tags"] = json.loads(values["tags"])
        return NoteRecord(**values)

    def list_notes(self, *, layer_id: int | None = None, channel: int | None = None,
                   run_id: int | None = None, offset: int = 0, limit: int = 20) -> list[NoteRecord]:
        """Return notes, newest first, filtered by layer, channel and run when given."""
        clauses, params = [], []
        for column, value in (("layer_id", layer_id), ("channel", channel), ("run_id", run_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.connections.get().execute(
            f"SELECT note_id FROM notes{where} ORDER BY note_id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [self.get_note(r[0]) for r in rows.fetchall()]

    # Explanations

    def add_explanation(self, *, layer_id: int, channel: int, text: str, author: str,
                        method: str, predicate: str | None = None,
                        evidence: dict[str, Any] | None = None,
                        scores: dict[str, Any] | None = None) -> ExplanationRecord:
        """Append a new version of the explanation of (layer, channel); never overwrites."""
        if not text.strip():
            raise InvalidArgumentError("an explanation needs non-empty text")
        with self.connections.atomic() as tx:
            version = tx.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM explanations"
                " WHERE layer_id = ? AND channel = ?",
                (layer_id, channel),
            ).fetchone()[0]
            explanation_id = tx.execute(
                "INSERT INTO explanations (layer_id, channel, version, text, predicate, author,"
                " method, evidence, scores, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (layer_id, channel, version, text, predicate, author, method,
                 json.dumps(evidence or {}, default=str), json.dumps(scores or {}, default=str),
                 utc_now()),
            ).lastrowid
        return self.get_explanation(explanation_id)

    def set_explanation_scores(self, explanation_id: int, scores: dict[str, Any]) -> ExplanationRecord:
        """Merge `scores` into an explanation version's scores (text and predicate never change)."""
        current = self.get_explanation(explanation_id)
        merged = {**current.scores, **scores}
        with self.connections.atomic() as tx:
            tx.execute("UPDATE explanations SET scores = ? WHERE explanation_id = ?",
                       (json.dumps(merged, default=str), explanation_id))
        return self.get_explanation(explanation_id)

    def get_explanation(self, explanation_id: int) -> ExplanationRecord:
        row = self.connections.get().execute(
            "SELECT * FROM explanations WHERE explanation_id = ?", (explanation_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"explanation {explanation_id} is not in the store")
        return _explanation_from_row(row)

    def list_explanations(self, layer_id: int, channel: int | None = None, *,
                          latest_only: bool = False, offset: int = 0,
                          limit: int = 50) -> list[ExplanationRecord]:
        """Return explanation versions of a layer (or one channel), newest version first."""
        sql = "SELECT * FROM explanations e WHERE layer_id = ?"
        params: list[Any] = [layer_id]
        if channel is not None:
            sql += " AND channel = ?"
            params.append(channel)
        if latest_only:
            sql += (" AND version = (SELECT max(version) FROM explanations x"
                    " WHERE x.layer_id = e.layer_id AND x.channel = e.channel)")
        rows = self.connections.get().execute(
            sql + " ORDER BY channel, version DESC LIMIT ? OFFSET ?", (*params, limit, offset)
        )
        return [_explanation_from_row(row) for row in rows]

    def latest_explanation(self, layer_id: int, channel: int) -> ExplanationRecord | None:
        found = self.list_explanations(layer_id, channel, latest_only=True, limit=1)
        return found[0] if found else None

    def search_explanations(self, query: str, *, layer_id: int | None = None, offset: int = 0,
                            limit: int = 20) -> list[ExplanationRecord]:
        """Full-text search (SQLite FTS5 syntax) over explanation text and predicates, best first.

        A query that is not valid FTS5 syntax is searched as a quoted phrase per word.
        """
        if not query.strip():
            raise InvalidArgumentError("a search needs a non-empty query")
        if "\x00" in query:
            # SQLite reads the query as a C string, so a NUL would cut it short.
            raise InvalidArgumentError("a search query cannot contain NUL characters; remove them")
        try:
            return self._search_explanations(query, layer_id, offset, limit)
        except sqlite3.OperationalError:
            # FTS5 reports a malformed query as "syntax error", "unterminated string" or, for
            # `word:`, "no such column"; searching the words as phrases cannot fail that way.
            quoted = " ".join('"' + word.replace('"', '""') + '"' for word in query.split())
            return self._search_explanations(quoted, layer_id, offset, limit)

    def _search_explanations(self, query: str, layer_id: int | None, offset: int,
                             limit: int) -> list[ExplanationRecord]:
        sql = ("SELECT e.* FROM explanations_fts f JOIN explanations e"
               " ON e.explanation_id = f.rowid WHERE explanations_fts MATCH ?")
        params: list[Any] = [query]
        if layer_id is not None:
            sql += " AND e.layer_id = ?"
            params.append(layer_id)
        rows = self.connections.get().execute(
            sql + " ORDER BY bm25(explanations_fts), e.explanation_id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [_explanation_from_row(row) for row in rows]

    def prune_explanations(self, layer_id: int, channel: int, *, keep_latest: int) -> int:
        """Delete all but the newest `keep_latest` versions of one channel's explanation.

        Only called on explicit request. Returns the number of versions deleted.
        """
        if keep_latest < 1:
            raise InvalidArgumentError(f"keep_latest must be at least 1, got {keep_latest}")
        with self.connections.atomic() as tx:
            cursor = tx.execute(
                "DELETE FROM explanations WHERE layer_id = ? AND channel = ? AND version <="
                " (SELECT max(version) FROM explanations WHERE layer_id = ? AND channel = ?) - ?",
                (layer_id, channel, layer_id, channel, keep_latest),
            )
            return cursor.rowcount
